"""The one freshness rule, for every step.

A step's key is a hash of its config and of the content hashes of its inputs. When a step
finishes it writes a record beside its outputs (`<folder>/.steps/<step>.json`): the key, and
a content hash of every output file. A step is skipped only when its recorded key equals
the key it would be run with now and every output still has its recorded hash; anything
that reads a step's output can check it against the same record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from headplast.errors import HeadplastError
from headplast.store.io import atomic_write_json, file_sha256, read_json, text_key

RECORD_DIR = ".steps"


def step_key(step: str, config: dict, inputs: dict) -> str:
    """The key of a step run with `config` on inputs with content hashes `inputs`."""
    return text_key({"step": step, "config": config, "inputs": inputs})


def record_path(base: str | Path, step: str) -> Path:
    return Path(base) / RECORD_DIR / f"{step}.json"


def read_record(base: str | Path, step: str) -> dict | None:
    p = record_path(base, step)
    return read_json(p, "step record") if p.exists() else None


def _files(base: Path, rel: str) -> list[str]:
    """A relative output path, or every file inside an output folder (hidden temporaries skipped)."""
    p = base / rel
    if p.is_dir():
        return sorted(str(f.relative_to(base)) for f in p.rglob("*")
                      if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
    return [rel]


def hash_outputs(base: str | Path, outputs) -> dict[str, str]:
    base = Path(base)
    return {f: file_sha256(base / f) for rel in outputs for f in _files(base, rel)}


def write_record(base: str | Path, step: str, key: str, outputs, seconds: float | None = None,
                 **extra) -> dict:
    """Record that `step` with `key` produced `outputs` (paths relative to base; folders expand)."""
    rec = {"step": step, "key": key, "outputs": hash_outputs(base, outputs),
           "seconds": None if seconds is None else round(seconds, 2),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write_json(record_path(base, step), rec)
    return rec


@dataclass(frozen=True)
class Freshness:
    state: str  # fresh | missing (never recorded) | stale (other key) | changed (outputs altered)
    detail: str = ""

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"


def changed_outputs(base: str | Path, rec: dict) -> list[str]:
    """Outputs of a record that are missing or whose content differs from the record."""
    base = Path(base)
    bad = []
    for rel, h in rec["outputs"].items():
        p = base / rel
        if not p.is_file() or file_sha256(p) != h:
            bad.append(rel)
    return bad


def freshness(base: str | Path, step: str, key: str) -> Freshness:
    rec = read_record(base, step)
    if rec is None:
        return Freshness("missing")
    if rec.get("key") != key:
        return Freshness("stale", f"recorded key {rec.get('key')} != {key}")
    bad = changed_outputs(base, rec)
    if bad:
        return Freshness("changed", ", ".join(bad))
    return Freshness("fresh")


def verify(base: str | Path, step: str, fix: str) -> dict:
    """The record of a finished step, after checking its outputs are unaltered.

    Raises a HeadplastError naming the first altered, truncated or missing file and `fix`.
    """
    base = Path(base)
    rec = read_record(base, step)
    if rec is None:
        raise HeadplastError(f"{base} has no record of step '{step}' ({record_path(base, step)} is missing)", fix)
    bad = changed_outputs(base, rec)
    if bad:
        p = base / bad[0]
        if not p.is_file():
            raise HeadplastError(f"{p} is missing (step '{step}' wrote it)", fix)
        raise HeadplastError(f"{p} was altered, truncated or replaced after step '{step}' wrote it "
                             f"(its content hash differs from {record_path(base, step)})", fix)
    return rec
