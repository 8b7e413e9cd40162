"""The bars every verdict, caution and report uses: one definition each.

RELIABILITY_BAR: split-half reliability (Spearman-Brown) below which a measure is called
unreliable; a correlation with it can be at most about sqrt(reliability), so below 0.8 it is
mostly noise (train/recipes.py sizes the default eval subset to reach it).

collapsed(metric, majority): a fine-tuned run whose validation metric is no better than the
majority class; computed once when the run is trained (run_config.json "collapsed") and read
from there by everything downstream.
"""

from __future__ import annotations

import math

RELIABILITY_BAR = 0.8
COLLAPSE_TOLERANCE = 1e-9  # metrics equal up to float rounding count as no better


def unreliable(reliability: float | None) -> bool:
    """Below RELIABILITY_BAR (an unknown or undefined reliability is not called unreliable)."""
    return reliability is not None and math.isfinite(reliability) and reliability < RELIABILITY_BAR


def collapsed(metric: float, majority: float) -> bool:
    """No better than always predicting the majority class."""
    return bool(metric <= majority + COLLAPSE_TOLERANCE)
