"""`headplast aggregate` (across seeds) and `headplast ranks` (across LoRA ranks)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from headplast.analysis.across import flat_stats, head_agreement, seed_intervals, summarise
from headplast.analysis.config import AnalysisConfig
from headplast.errors import HeadplastError
from headplast.options import NONNEGATIVE, POSITIVE, opt, option, validate
from headplast.plotting.across_plots import multi_seed_figure, rank_figures
from headplast.report.aggregate_summary import aggregate_summary
from headplast.steps.analyse_step import analysed
from headplast.steps import versions
from headplast.steps.outcome import Outcome, recorded_step
from headplast.steps.runs import check_comparable, input_hashes, measured_run, resolve_task, run_info
from headplast.store import layout
from headplast.store.io import atomic_path, atomic_write_json, atomic_write_text


def _collect(root, task, labels, seeds, acfg):
    runs = {}
    for lab in labels:
        for s in seeds:
            d = measured_run(root, task, lab, s)
            df, stats, cases = analysed(d, acfg)
            info = run_info(d)
            runs[(lab, s)] = {"dir": str(d), "df": df, "info": info, "flat": flat_stats(stats, cases, info),
                              "stats": stats}
    check_comparable([r["info"] for r in runs.values()], "aggregate")
    return runs


def _tidy(runs, include_collapsed: bool, root) -> pd.DataFrame:
    """One row per (run, statistic); run_dir relative to the output root, so a moved root stays valid."""
    rows = []
    for (lab, s), r in runs.items():
        col = bool(r["info"]["collapsed"])
        for k, v in r["flat"].items():
            rows.append({"method": lab, "seed": s, "statistic": k, "value": float(v) if v is not None else np.nan,
                         "collapsed": col, "included": include_collapsed or not col,
                         "run_dir": str(Path(r["dir"]).resolve().relative_to(Path(root).resolve()))})
    return pd.DataFrame(rows)


def _write_table(df: pd.DataFrame, out: Path, stem: str) -> None:
    atomic_write_text(out / f"{stem}.csv", df.to_csv(index=False))
    with atomic_path(out / f"{stem}.parquet") as tmp:
        df.to_parquet(tmp, index=False)


def _runs_key(step: str, cfg, labels, seeds) -> str:
    """Key of a cross-run step: its config and the content hashes of every run it reads."""
    hashes = {f"{lab}/seed{s}": input_hashes(measured_run(cfg.output_root, cfg.task, lab, s))
              for lab in labels for s in seeds}
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("output_root", "out_dir", "force")}
    conf["analysis_version"] = versions.version_of("analyse")  # the runs' statistics are recomputed here
    return versions.key(step, conf, hashes)


@dataclass(frozen=True)
class AggregateConfig:
    task: str | None = option(None, "GLUE task (default: the one task with runs under --output-root)")
    methods: tuple[str, ...] = option(("FFT", "LoRA_r8"), "run labels: FFT LoRA_r8 ...", aliases=("--method",))
    seeds: tuple[int, ...] = option((1, 2, 3, 4, 5), "seeds to aggregate", **NONNEGATIVE)
    output_root: str = option("outputs", "root under which runs are found and written")
    out_dir: str | None = option(None, "default: <output-root>/MULTI_SEED", aliases=("--out_dir",))
    include_collapsed: bool = option(False, "keep runs no better than the majority class")
    analysis: AnalysisConfig = field(default=AnalysisConfig(), metadata=opt(cli=False))
    force: bool = option(False, "redo even if up to date")

    def __post_init__(self):
        validate(self)


def run_aggregate(cfg: AggregateConfig) -> Outcome:
    cfg = replace(cfg, task=resolve_task(cfg.output_root, cfg.task))
    out = Path(cfg.out_dir) if cfg.out_dir else layout.multi_seed_dir(cfg.output_root)
    key = _runs_key("aggregate", cfg, cfg.methods, cfg.seeds)
    files = layout.with_format(layout.AGGREGATE_FILES, cfg.analysis.figure_format)
    return recorded_step(out, "aggregate", key, files, lambda: _write_aggregate(cfg, out), cfg.force, lambda: str(out))


def _write_aggregate(cfg: AggregateConfig, out: Path) -> None:
    runs = _collect(cfg.output_root, cfg.task, cfg.methods, cfg.seeds, cfg.analysis)
    table = _tidy(runs, cfg.include_collapsed, cfg.output_root)
    summary = summarise(table, list(cfg.methods))
    for lab in cfg.methods:  # each seed's own uncertainty, which the t-interval over seeds leaves out
        kept = [runs[(lab, s)]["stats"] for s in cfg.seeds
                if cfg.include_collapsed or not runs[(lab, s)]["info"]["collapsed"]]
        for name, iv in seed_intervals(kept).items():
            if name in summary["per_method"].get(lab, {}):
                summary["per_method"][lab][name].update({f"seed_{k}": v for k, v in iv.items()})
    collapsed = sorted({(m, int(s)) for m, s in table[table.collapsed][["method", "seed"]].itertuples(index=False)})
    agreement = {}
    for lab in cfg.methods:
        keep = {s: runs[(lab, s)]["df"] for s in cfg.seeds
                if cfg.include_collapsed or not runs[(lab, s)]["info"]["collapsed"]}
        agreement[lab] = head_agreement(keep)
    excluded = [] if cfg.include_collapsed else [
        {"method": m, "seed": s, "reason": _collapse_reason(runs[(m, s)]["info"])} for m, s in collapsed]
    metrics = {"task": cfg.task, "methods": list(cfg.methods), "seeds": list(cfg.seeds),
               "collapsed_runs": [{"method": m, "seed": s} for m, s in collapsed], "excluded_runs": excluded,
               "methods_without_runs": [m for m in cfg.methods if not summary["per_method"][m]],
               "collapsed_excluded": not cfg.include_collapsed, **summary, "head_agreement": agreement,
               "equivalence_margin": cfg.analysis.equivalence_margin,
               "runs": {f"{m}/seed{s}": r["info"] for (m, s), r in runs.items()}}
    _write_table(table, out, "runs_table")
    atomic_write_json(out / layout.AGGREGATE_METRICS, metrics)
    atomic_write_text(out / "summary.txt", aggregate_summary(metrics))
    multi_seed_figure(table, summary, out / f"multi_seed_stats.{cfg.analysis.figure_format}", cfg.task)


def _collapse_reason(info: dict) -> str:
    return (f"collapsed: validation {info['val_metric_name']} {info['val_metric']:.4f} is no better than the "
            f"majority class ({info['majority']:.4f}); --include-collapsed keeps it")


@dataclass(frozen=True)
class RanksConfig:
    task: str | None = option(None, "GLUE task (default: the one task with runs under --output-root)")
    seed: int = option(1, "seed of the runs", **NONNEGATIVE)
    ranks: tuple[int, ...] = option((4, 8, 16, 32), "LoRA ranks to compare", **POSITIVE)
    output_root: str = option("outputs", "root under which runs are found and written")
    out_dir: str | None = option(None, "default: <output-root>/RANK_COMPARISON", aliases=("--out_dir",))
    analysis: AnalysisConfig = field(default=AnalysisConfig(), metadata=opt(cli=False))
    force: bool = option(False, "redo even if up to date")

    def __post_init__(self):
        validate(self)

    @property
    def labels(self) -> list[str]:
        return [layout.RunId(self.task, "lora", self.seed, r).label for r in self.ranks]


def _fft_reference(cfg: RanksConfig) -> list[str]:
    """The FFT run of the same seed, when it exists, is drawn as a reference."""
    try:
        measured_run(cfg.output_root, cfg.task, "FFT", cfg.seed)
        return ["FFT"]
    except HeadplastError:
        return []


def run_ranks(cfg: RanksConfig) -> Outcome:
    cfg = replace(cfg, task=resolve_task(cfg.output_root, cfg.task))
    out = Path(cfg.out_dir) if cfg.out_dir else layout.rank_dir(cfg.output_root)
    key = _runs_key("ranks", cfg, cfg.labels + _fft_reference(cfg), [cfg.seed])
    files = layout.with_format(layout.RANK_FILES, cfg.analysis.figure_format)
    return recorded_step(out, "ranks", key, files, lambda: _write_ranks(cfg, out), cfg.force, lambda: str(out))


def _write_ranks(cfg: RanksConfig, out: Path) -> None:
    labels = cfg.labels
    runs = _collect(cfg.output_root, cfg.task, labels, [cfg.seed], cfg.analysis)
    fft = None
    if _fft_reference(cfg):
        fft_dir = measured_run(cfg.output_root, cfg.task, "FFT", cfg.seed)
        df, stats, cases = analysed(fft_dir, cfg.analysis)
        info = run_info(fft_dir)
        check_comparable([info] + [r["info"] for r in runs.values()], "compare ranks with FFT:")
        fft = {"dir": str(fft_dir), "df": df, "info": info, "flat": flat_stats(stats, cases, info)}
    rows = []
    for r, lab in zip(cfg.ranks, labels):
        run = runs[(lab, cfg.seed)]
        u = run["df"]["U"].to_numpy(float)
        rows.append({"rank": r, "label": lab, "trainable_params": run["info"]["trainable_params"],
                     "U_median": float(np.median(u)), "U_q10": float(np.quantile(u, 0.1)),
                     "U_q90": float(np.quantile(u, 0.9)), "collapsed": run["info"]["collapsed"], **run["flat"]})
    table = pd.DataFrame(rows)
    atomic_write_text(out / "rank_table.csv", table.to_csv(index=False))
    metrics = {"task": cfg.task, "seed": cfg.seed, "ranks": list(cfg.ranks),
               "per_rank": table.to_dict(orient="records"),
               "fft_reference": None if fft is None else {"dir": fft["dir"], **fft["flat"],
                                                          "U_median": float(fft["df"]["U"].median())}}
    atomic_write_json(out / "rank_metrics.json", metrics)
    rank_figures(table, {lab: runs[(lab, cfg.seed)]["df"] for lab in labels}, fft, out, cfg.task, cfg.seed,
                 cfg.analysis.figure_format)
