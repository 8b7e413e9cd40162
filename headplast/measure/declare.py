"""What a per-head measurement is: its schema (headplast.store.schema: files, columns, pairs, where
its numbers go) and the code that computes it. The measure step runs these; everything
downstream reads the torch-free schemas.

A new measurement is a `Schema` in store/schema.py (SCHEMAS), one module here that defines its
result dataclass (headplast.measure.results style), a compute function and
`Measurement.of(schema, result, compute)`, plus one line in `registry.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Protocol

from headplast.measure.config import MeasureConfig
from headplast.store.schema import NEEDS, Schema  # noqa: F401  (NEEDS: this module's older home)


class Inputs(Protocol):
    """What a compute function receives (the measure step provides it, loading lazily)."""

    cfg: MeasureConfig
    task: object  # TaskSpec
    enc: object  # Encoded eval subset
    pad_id: int

    def model(self, which: str, exact: bool = False):
        """theta0 or theta1 in eval mode; exact=True: fp32 on the CPU (for weight differences),
        else on the compute device in --dtype."""


@dataclass(frozen=True, init=False)
class Measurement(Schema):
    """A schema with its result dataclass (its [L, H] fields are the file's fields) and compute
    function ((Inputs) -> result). Every schema attribute reads as before (name, columns, version...)."""

    result: type = None
    compute: Callable = None

    def __init__(self, name, result: type, compute: Callable, needs: tuple[str, ...] = (), fields=None, **kw):
        """Measurement(name, result, compute, needs=..., columns=..., ...) declares the schema
        inline (its fields from `result`); Measurement.of(schema, result, compute) uses a declared one."""
        have = result.head_fields()
        if fields is not None and tuple(fields) != have:
            raise ValueError(f"{name}: the schema's fields {tuple(fields)} are not {result.__name__}'s {have}")
        for k, v in dict(name=name, fields=have, needs=needs, result=result, compute=compute, **kw).items():
            object.__setattr__(self, k, v)
        for f in _schema_fields():  # the defaults of the fields not given
            if f.name not in self.__dict__:
                object.__setattr__(self, f.name, f.default_factory() if callable(f.default_factory) else f.default)
        self.__post_init__()

    @classmethod
    def of(cls, schema: Schema, result: type, compute: Callable) -> "Measurement":
        return cls(result=result, compute=compute, **{f.name: getattr(schema, f.name) for f in _schema_fields()})

    @property
    def schema(self) -> Schema:
        return Schema(**{f.name: getattr(self, f.name) for f in _schema_fields()})


def _schema_fields():
    return fields(Schema)
