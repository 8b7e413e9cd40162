"""`headplast compare`: FFT vs LoRA for one task and seed, into COMPARE/<task>/seed<seed>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from headplast.analysis.compare import findings, key_statistics
from headplast.analysis.run_analysis import AnalysisConfig, analyse
from headplast.analysis.table import check_comparable, measured_run, run_info
from headplast.errors import HeadplastError
from headplast.orchestration import layout
from headplast.orchestration.io import atomic_write_json, atomic_write_text
from headplast.report.compare_summary import compare_summary


@dataclass(frozen=True)
class CompareConfig:
    task: str = "RTE"
    seed: int = 1
    labels: tuple[str, ...] = ("FFT", "LoRA_r8")
    output_root: str = "outputs"
    out_dir: str | None = None
    analysis: AnalysisConfig = AnalysisConfig()


def run_compare(cfg: CompareConfig) -> Path:
    from headplast.plotting import compare_plots as cp

    if len(cfg.labels) != 2:
        raise HeadplastError("compare takes exactly two runs", "e.g. --labels FFT LoRA_r8")
    dirs = {lab: measured_run(cfg.output_root, cfg.task, lab, cfg.seed) for lab in cfg.labels}
    infos = {lab: run_info(d) for lab, d in dirs.items()}
    check_comparable(list(infos.values()), "compare")
    dfs, stats, cases = {}, {}, {}
    for lab, d in dirs.items():
        dfs[lab], stats[lab], cases[lab] = analyse(d, cfg.analysis)
    a = cfg.analysis
    keys = key_statistics(dfs, a.top_k, a.top_quantile, a.bottom_quantile, a.n_boot, a.seed)
    n = len(next(iter(dfs.values())))
    first = next(iter(infos.values()))
    val = {lab: infos[lab]["val_metric"] for lab in cfg.labels}
    val.update(metric_name=first["val_metric_name"], theta0=first["val_metric_theta0"],
               majority=_majority(dirs[cfg.labels[0]]))
    m = {"task": cfg.task, "seed": cfg.seed, "labels": list(cfg.labels), "n_heads": n, "k": a.top_k,
         "eval_subset_size": first["subset_size"], "topk_chance": min(a.top_k, n) / n,
         "expected_cases": cases[cfg.labels[0]]["important_but_static"]["expected_if_independent"],
         "runs": infos, "validation": val, "key_statistics": keys, "stats": stats, "cases": cases,
         "analysis_config": a.__dict__}
    m["findings"] = findings(keys, tuple(cfg.labels), stats, val, a.top_k)
    out = Path(cfg.out_dir) if cfg.out_dir else layout.compare_dir(cfg.output_root, cfg.task, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    cp.compare_i_vs_u(dfs, stats, out / "compare_I_vs_U.png")
    cp.compare_stats(m, stats, out / "compare_stats.png")
    cp.compare_update_dist(dfs, out / "compare_update_dist.png")
    cp.compare_headwise(dfs, out / "compare_headwise.png")
    atomic_write_json(out / "compare_metrics.json", m)
    atomic_write_text(out / "compare_summary.txt", compare_summary(m))
    return out


def _majority(run_dir: Path) -> float:
    from headplast.orchestration.io import read_json

    return read_json(run_dir / layout.RUN_CONFIG)["validation"]["majority_baseline"]
