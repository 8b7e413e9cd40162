"""`headplast aggregate` (across seeds) and `headplast ranks` (across LoRA ranks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from headplast.analysis.across import HEADLINE, flat_stats, head_agreement, summarise
from headplast.analysis.run_analysis import AnalysisConfig, analyse
from headplast.analysis.table import check_comparable, measured_run, run_info
from headplast.errors import HeadplastError
from headplast.orchestration import layout
from headplast.orchestration.io import atomic_write_json, atomic_write_text


def _collect(root, task, labels, seeds, acfg):
    runs = {}
    for lab in labels:
        for s in seeds:
            d = measured_run(root, task, lab, s)
            df, stats, cases = analyse(d, acfg)
            info = run_info(d)
            runs[(lab, s)] = {"dir": str(d), "df": df, "info": info, "flat": flat_stats(stats, cases, info)}
    check_comparable([r["info"] for r in runs.values()], "aggregate")
    return runs


def _tidy(runs, include_collapsed: bool) -> pd.DataFrame:
    rows = []
    for (lab, s), r in runs.items():
        col = bool(r["info"]["collapsed"])
        for k, v in r["flat"].items():
            rows.append({"method": lab, "seed": s, "statistic": k, "value": float(v) if v is not None else np.nan,
                         "collapsed": col, "included": include_collapsed or not col, "run_dir": r["dir"]})
    return pd.DataFrame(rows)


def _write_table(df: pd.DataFrame, out: Path, stem: str) -> None:
    from headplast.orchestration.io import atomic_write_text

    atomic_write_text(out / f"{stem}.csv", df.to_csv(index=False))
    tmp = out / f".{stem}.parquet.tmp"
    df.to_parquet(tmp, index=False)
    tmp.replace(out / f"{stem}.parquet")


@dataclass(frozen=True)
class AggregateConfig:
    task: str = "RTE"
    methods: tuple[str, ...] = ("FFT", "LoRA_r8")
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    output_root: str = "outputs"
    out_dir: str | None = None
    include_collapsed: bool = False
    analysis: AnalysisConfig = AnalysisConfig()


def run_aggregate(cfg: AggregateConfig) -> Path:
    from headplast.plotting.across_plots import multi_seed_figure

    runs = _collect(cfg.output_root, cfg.task, cfg.methods, cfg.seeds, cfg.analysis)
    table = _tidy(runs, cfg.include_collapsed)
    summary = summarise(table, list(cfg.methods))
    collapsed = sorted({(m, int(s)) for m, s in table[table.collapsed][["method", "seed"]].itertuples(index=False)})
    agreement = {}
    for lab in cfg.methods:
        keep = {s: runs[(lab, s)]["df"] for s in cfg.seeds
                if cfg.include_collapsed or not runs[(lab, s)]["info"]["collapsed"]}
        agreement[lab] = head_agreement(keep)
    out = Path(cfg.out_dir) if cfg.out_dir else layout.multi_seed_dir(cfg.output_root)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"task": cfg.task, "methods": list(cfg.methods), "seeds": list(cfg.seeds),
               "collapsed_runs": [{"method": m, "seed": s} for m, s in collapsed],
               "collapsed_excluded": not cfg.include_collapsed, **summary, "head_agreement": agreement,
               "runs": {f"{m}/seed{s}": r["info"] for (m, s), r in runs.items()}}
    _write_table(table, out, "runs_table")
    atomic_write_json(out / "aggregate_metrics.json", metrics)
    atomic_write_text(out / "summary.txt", _aggregate_text(metrics))
    multi_seed_figure(table, summary, out / "multi_seed_stats.png", cfg.task)
    return out


def _fmt_ci(d):
    lo, hi = d["ci95"]
    return f"{d['mean']:+.4f} ± {d['std']:.4f} (95% CI [{lo:+.4f}, {hi:+.4f}], n={d['n']})"


def _aggregate_text(m) -> str:
    lines = ["=" * 60, f"Across seeds: {m['task']}, methods {', '.join(m['methods'])}, seeds {m['seeds']}",
             "=" * 60]
    if m["collapsed_runs"]:
        state = "excluded" if m["collapsed_excluded"] else "included"
        lines.append(f"Collapsed runs ({state}): " + ", ".join(f"{c['method']} seed {c['seed']}"
                                                              for c in m["collapsed_runs"]))
    for s in HEADLINE:
        lines += ["", f"## {s}"]
        for meth in m["methods"]:
            d = m["per_method"][meth].get(s)
            if d:
                lines.append(f"  {meth}: {_fmt_ci(d)}")
        for pair, res in m["paired_tests"].items():
            t = res.get(s)
            if t:
                lines.append(f"  {pair}: mean diff {t['mean_difference']:+.4f}, paired t p = {t['t_p']:.3g}, "
                             f"Wilcoxon p = {t['wilcoxon_p']:.3g} (n = {t['n_pairs']})")
    lines += ["", "## head-level agreement across seeds"]
    for meth, ag in m["head_agreement"].items():
        for col, a in ag.items():
            lines.append(f"  {meth} {col}: mean pairwise Spearman {a['mean_pairwise_spearman']:.3f}, "
                         f"Kendall's W {a['kendalls_w']:.3f} ({a['n_seeds']} seeds)")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RanksConfig:
    task: str = "RTE"
    seed: int = 1
    ranks: tuple[int, ...] = (4, 8, 16, 32)
    output_root: str = "outputs"
    out_dir: str | None = None
    analysis: AnalysisConfig = AnalysisConfig()


def run_ranks(cfg: RanksConfig) -> Path:
    from headplast.plotting.across_plots import rank_figures

    labels = [f"LoRA_r{r}" for r in cfg.ranks]
    runs = _collect(cfg.output_root, cfg.task, labels, [cfg.seed], cfg.analysis)
    fft = None
    try:
        fft_dir = measured_run(cfg.output_root, cfg.task, "FFT", cfg.seed)
        df, stats, cases = analyse(fft_dir, cfg.analysis)
        info = run_info(fft_dir)
        check_comparable([info] + [r["info"] for r in runs.values()], "compare ranks with FFT:")
        fft = {"dir": str(fft_dir), "df": df, "info": info, "flat": flat_stats(stats, cases, info)}
    except HeadplastError as e:
        if "different" in e.problem:
            raise
    rows = []
    for r, lab in zip(cfg.ranks, labels):
        run = runs[(lab, cfg.seed)]
        u = run["df"]["U"].to_numpy(float)
        rows.append({"rank": r, "label": lab, "trainable_params": run["info"]["trainable_params"],
                     "U_median": float(np.median(u)), "U_q10": float(np.quantile(u, 0.1)),
                     "U_q90": float(np.quantile(u, 0.9)), "collapsed": run["info"]["collapsed"], **run["flat"]})
    table = pd.DataFrame(rows)
    out = Path(cfg.out_dir) if cfg.out_dir else layout.rank_dir(cfg.output_root)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "rank_table.csv", table.to_csv(index=False))
    metrics = {"task": cfg.task, "seed": cfg.seed, "ranks": list(cfg.ranks),
               "per_rank": table.to_dict(orient="records"),
               "fft_reference": None if fft is None else {"dir": fft["dir"], **fft["flat"],
                                                          "U_median": float(fft["df"]["U"].median())}}
    atomic_write_json(out / "rank_metrics.json", metrics)
    rank_figures(table, {lab: runs[(lab, cfg.seed)]["df"] for lab in labels}, fft, out, cfg.task, cfg.seed)
    return out
