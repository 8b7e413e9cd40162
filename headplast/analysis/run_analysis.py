"""Per-run analysis: heads.csv, stats.json, cases.json and the figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from headplast.analysis.cases import counter_examples
from headplast.analysis.stats import run_stats
from headplast.analysis.table import load_heads, load_losses, run_info
from headplast.orchestration import layout
from headplast.orchestration.io import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class AnalysisConfig:
    top_k: int = 20
    top_quantile: float = 0.2
    bottom_quantile: float = 0.5
    n_boot: int = 2000
    n_perm: int = 1000
    seed: int = 0


def analyse(run_dir, cfg: AnalysisConfig = AnalysisConfig()) -> tuple:
    """(heads table, stats, cases) of a measured run, computed from its files."""
    df = load_heads(run_dir)
    st = run_stats(df, load_losses(run_dir, "pre"), load_losses(run_dir, "post"), cfg.top_k, cfg.n_boot,
                   cfg.n_perm, cfg.seed)
    st["config"] = asdict(cfg)
    cases = counter_examples(df, "I_pre", "U", cfg.top_quantile, cfg.bottom_quantile)
    return df, st, cases


def write_run_analysis(run_dir, cfg: AnalysisConfig = AnalysisConfig(), figures: bool = True) -> dict:
    from headplast.plotting.run_plots import run_figures

    d = Path(run_dir)
    df, st, cases = analyse(d, cfg)
    info = run_info(d)
    st["run"] = info
    atomic_write_text(d / layout.HEADS_CSV, df.to_csv(index=False))
    atomic_write_json(d / layout.STATS, st)
    atomic_write_json(d / layout.CASES, cases)
    if figures:
        run_figures(df, st, f"{info['label']} {info['task']} seed {info['seed']}", d)
    return st
