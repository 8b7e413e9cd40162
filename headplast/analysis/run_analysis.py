"""Per-run analysis: statistics and counter-examples from the per-head table (pure)."""

from __future__ import annotations

from dataclasses import asdict

from headplast.analysis.cases import counter_examples, effect_cases
from headplast.analysis.config import AnalysisConfig
from headplast.analysis.stats import run_stats
from headplast.store import schema


def analyse(df, pairs, per_example: dict | None = None, cfg: AnalysisConfig = AnalysisConfig(),
            halves: dict | None = None) -> tuple[dict, dict]:
    """(stats, cases) of a run's heads table; per_example: column -> per-example values, halves: column
    -> values on random halves [splits, 2, heads] (both for reliability)."""
    st = run_stats(df, pairs, per_example, cfg.top_k, cfg.n_boot, cfg.n_perm, cfg.seed, cfg.n_boot_examples,
                   cfg.equivalence_margin, beyond={"I_pre": schema.plasticity_columns()}, given=schema.BEYOND_GIVEN,
                   halves=halves)
    st["config"] = asdict(cfg)
    cases = counter_examples(df, "I_pre", "U", cfg.top_quantile, cfg.bottom_quantile)
    if "effect_fwd" in df:
        cases.update(effect_cases(df, "U", "effect_fwd", cfg.top_quantile, cfg.bottom_quantile))
    return st, cases
