"""Configuration of the statistics (flags of plot, compare, aggregate, ranks and pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

from headplast.options import NONNEGATIVE, OPEN_FRACTION, POSITIVE, option, validate
from headplast.store.layout import FIGURE_FORMATS


@dataclass(frozen=True)
class AnalysisConfig:
    top_k: int = option(20, "K of the top-K overlap", **POSITIVE)
    top_quantile: float = option(0.2, "'important'/'plastic': this top fraction of heads", **OPEN_FRACTION)
    bottom_quantile: float = option(0.5, "'static'/'unimportant': this bottom fraction of heads", **OPEN_FRACTION)
    n_boot: int = option(2000, "bootstrap resamples of heads", **POSITIVE)
    n_boot_examples: int = option(2000, "bootstrap resamples of eval examples (importance recomputed from "
                                  "the per-example losses)", **POSITIVE)
    n_perm: int = option(1000, "permutations of the within-layer test", **POSITIVE)
    equivalence_margin: float = option(0.2, "smallest effect of interest: 'no relation' is said only when an "
                                       "equivalence test (TOST) rejects |rho| >= this", **OPEN_FRACTION)
    seed: int = option(0, "seed of resampling and permutations", flag="--stats-seed", **NONNEGATIVE)
    figure_format: str = option("png", "format of the static figures (pdf and svg are vector)",
                                choices=FIGURE_FORMATS)

    def __post_init__(self):
        validate(self)
