"""Every per-head measurement, in the order of heads.csv's columns (and of the measure step): each
schema of headplast.store.schema.SCHEMAS with the code that computes it."""

from __future__ import annotations

from headplast.measure.ablation import IMPORTANCE_GROUP, IMPORTANCE_POST, IMPORTANCE_PRE, VARIANTS
from headplast.measure.circuit import CIRCUIT_UPDATE
from headplast.measure.declare import Measurement
from headplast.measure.effect import UPDATE_EFFECT, UPDATE_EFFECT_GROUP
from headplast.measure.funcchange import FUNC_CHANGE
from headplast.measure.geometry import UPDATE_GEOMETRY
from headplast.measure.gradfisher import GRADFISHER
from headplast.measure.joint import UPDATE_JOINT
from headplast.measure.update import UPDATE
from headplast.store import schema

# optional ones (importance under further ablations) last: computed only when --ablation asks for them
MEASUREMENTS: tuple[Measurement, ...] = (IMPORTANCE_PRE, UPDATE, GRADFISHER, IMPORTANCE_POST, UPDATE_EFFECT,
                                         UPDATE_GEOMETRY, CIRCUIT_UPDATE, UPDATE_JOINT, FUNC_CHANGE, *VARIANTS,
                                         UPDATE_EFFECT_GROUP, IMPORTANCE_GROUP)
if tuple(m.name for m in MEASUREMENTS) != tuple(s.name for s in schema.SCHEMAS):  # one order: heads.csv's
    raise ImportError("headplast.measure.registry and headplast.store.schema.SCHEMAS list different measurements")


def enabled(cfg) -> tuple[Measurement, ...]:
    """The measurements a measure step with MeasureConfig `cfg` computes."""
    return tuple(m for m in MEASUREMENTS if m.is_enabled(cfg))


def required() -> tuple[Measurement, ...]:
    """The measurements every measured run has."""
    return tuple(m for m in MEASUREMENTS if not m.optional and m.required)


def get(name: str) -> Measurement:
    return schema.named(MEASUREMENTS, name)


def stat_pairs() -> tuple[tuple[str, str], ...]:
    return tuple(p for m in MEASUREMENTS for p in m.pairs)


def labels() -> dict[str, str]:
    return {c: lab for m in MEASUREMENTS for c, lab in m.labels.items()}


def log_columns() -> frozenset[str]:
    return frozenset(c for m in MEASUREMENTS for c in m.log_columns)

