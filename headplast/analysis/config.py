"""Configuration of the statistics (flags of plot, compare, aggregate, ranks and pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

from headplast.options import option


@dataclass(frozen=True)
class AnalysisConfig:
    top_k: int = option(20, "K of the top-K overlap")
    top_quantile: float = option(0.2, "'important'/'plastic': this top fraction of heads")
    bottom_quantile: float = option(0.5, "'static'/'unimportant': this bottom fraction of heads")
    n_boot: int = option(2000, "bootstrap resamples of heads")
    n_boot_examples: int = option(1000, "bootstrap resamples of eval examples (importance recomputed from "
                                  "the per-example losses)")
    n_perm: int = option(1000, "permutations of the within-layer test")
    seed: int = option(0, "seed of resampling and permutations", flag="--stats-seed")
