"""Per-run analysis: statistics and counter-examples from the per-head table (pure)."""

from __future__ import annotations

from dataclasses import asdict

from headplast.analysis.cases import counter_examples, effect_cases
from headplast.analysis.config import AnalysisConfig
from headplast.analysis.groups import DEFINITION, PAIRS, SUMMED, group_per_example, group_table
from headplast.analysis.stats import run_stats
from headplast.store import schema


def analyse(df, pairs, per_example: dict | None = None, cfg: AnalysisConfig = AnalysisConfig(),
            halves: dict | None = None, group_size: int = 1) -> tuple[dict, dict]:
    """(stats, cases) of a run's heads table; per_example: column -> per-example values, halves: column
    -> values on random halves [splits, 2, heads] (both for reliability); group_size: query heads per
    K/V head (> 1: stats['kv_groups'], the statistics over K/V groups, analysis.groups)."""
    st = run_stats(df, pairs, per_example, cfg.top_k, cfg.n_boot, cfg.n_perm, cfg.seed, cfg.n_boot_examples,
                   cfg.equivalence_margin, beyond={"I_pre": schema.plasticity_columns()}, given=schema.BEYOND_GIVEN,
                   halves=halves)
    if group_size > 1:
        st["kv_groups"] = group_stats(df, group_size, cfg, per_example)
    st["config"] = asdict(cfg)
    cases = counter_examples(df, "I_pre", "U", cfg.top_quantile, cfg.bottom_quantile)
    if "effect_fwd" in df:
        cases.update(effect_cases(df, "U", "effect_fwd", cfg.top_quantile, cfg.bottom_quantile))
    return st, cases


def group_stats(df, group_size: int, cfg: AnalysisConfig, per_example: dict | None = None) -> dict:
    """The statistics over K/V groups (layer-block intervals as for heads; example intervals for the
    summed importances, from the same examples' losses)."""
    gt = group_table(df, group_size)
    L = int(df["layer"].max()) + 1
    pe = {c: group_per_example(m, L, group_size) for c, m in (per_example or {}).items() if c in SUMMED and m is not None}
    st = run_stats(gt, PAIRS, pe, max(1, cfg.top_k // group_size), cfg.n_boot, cfg.n_perm, cfg.seed,
                   cfg.n_boot_examples, cfg.equivalence_margin)
    st["n_groups"] = st.pop("n_heads")
    return {"group_size": group_size, "definition": DEFINITION, **st,
            "table": gt.astype(object).where(gt.notna(), None).to_dict("list")}
