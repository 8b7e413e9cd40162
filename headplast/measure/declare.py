"""What a per-head measurement is, declared once: the measure step, the files, heads.csv,
the statistics' pairs and the plot labels all derive from these declarations.

A new measurement is one module that defines its result dataclass (headplast.measure.results
style), a compute function and a `Measurement`, plus one line in `registry.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from headplast.measure.config import MeasureConfig

NEEDS = ("theta0", "theta1", "eval")


class Inputs(Protocol):
    """What a compute function receives (the measure step provides it, loading lazily)."""

    cfg: MeasureConfig
    task: object  # TaskSpec
    enc: object  # Encoded eval subset
    pad_id: int

    def model(self, which: str, exact: bool = False):
        """theta0 or theta1 in eval mode; exact=True: fp32 on the CPU (for weight differences),
        else on the compute device in --dtype."""


@dataclass(frozen=True)
class Measurement:
    name: str  # step name; the file is <name>.jsonl with one row per head
    result: type  # a HeadTable dataclass: its [L, H] fields are the file's fields
    compute: Callable  # (Inputs) -> result
    needs: tuple[str, ...]  # of NEEDS
    columns: dict = field(default_factory=dict)  # file field -> heads.csv column (default: same name)
    labels: dict = field(default_factory=dict)  # heads.csv column -> axis label
    log_columns: tuple[str, ...] = ()  # positive magnitudes: log axes
    pairs: tuple[tuple[str, str], ...] = ()  # (x, y) heads.csv columns this adds to stats.json
    settings: tuple[str, ...] = ()  # MeasureConfig fields that change the result
    # .npy of per-example values [N, 1 + L*H] of the first field (split-half reliability, example
    # bootstrap), or {field: .npy} for several fields
    per_example: str | dict | None = None
    enabled: Callable | None = None  # (MeasureConfig) -> bool: computed only when asked for; None: always
    # further files the result writes beside its jsonl (result.extra_files(): .npy arrays or
    # .jsonl rows that are not one per head)
    extra_files: tuple[str, ...] = ()
    # computed by every process of a torchrun / accelerate launch together, each its share of the
    # heads (headplast.measure.shard); the others are computed by rank 0 alone
    split: bool = False
    # the version of its compute code, part of its key: bump it when a change alters what it
    # writes for the same inputs (headplast.steps.versions says when); 1 = before versions were kept
    version: int = 1

    def __post_init__(self):
        bad = set(self.needs) - set(NEEDS)
        if bad:
            raise ValueError(f"{self.name}: unknown needs {bad}; use {NEEDS}")

    @property
    def optional(self) -> bool:
        return self.enabled is not None

    def is_enabled(self, cfg: MeasureConfig) -> bool:
        return self.enabled is None or bool(self.enabled(cfg))

    @property
    def on_device(self) -> bool:
        """Computed on the compute device in --dtype (the others use theta0/theta1 in fp32 on the
        CPU: Inputs.model(exact=True)); --dtype is then one of its settings."""
        return "dtype" in self.settings

    @property
    def file(self) -> str:
        return f"{self.name}.jsonl"

    @property
    def fields(self) -> tuple[str, ...]:
        return self.result.head_fields()

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.file,) + tuple(self.per_example_files.values()) + self.extra_files

    @property
    def per_example_files(self) -> dict[str, str]:
        """heads.csv column -> the .npy of its per-example values."""
        if isinstance(self.per_example, dict):
            return {self.column(f): file for f, file in self.per_example.items()}
        return {self.main_column: self.per_example} if self.per_example else {}

    @property
    def shared(self) -> bool:
        """Depends on theta0 only: computed once for every run that starts from the same theta0."""
        return "theta1" not in self.needs

    def column(self, f: str) -> str:
        return self.columns.get(f, f)

    @property
    def head_columns(self) -> tuple[str, ...]:
        return tuple(self.column(f) for f in self.fields)

    @property
    def main_column(self) -> str:
        """The column its per-example values are the reliability of (the first field)."""
        return self.column(self.fields[0])
