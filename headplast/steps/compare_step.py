"""`headplast compare`: FFT vs LoRA for one task and seed, into COMPARE/<task>/seed<seed>/."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from headplast.analysis.compare import key_statistics
from headplast.analysis.config import AnalysisConfig
from headplast.errors import HeadplastError
from headplast.options import NONNEGATIVE, opt, option, validate
from headplast.plotting import compare_plots as cp
from headplast.report.compare_summary import compare_summary
from headplast.report.findings import findings
from headplast.report.headline import headline
from headplast.steps.analyse_step import analysed
from headplast.steps.outcome import Outcome, recorded_step
from headplast.steps.runs import (check_comparable, input_hashes, load_per_example, measured_run, resolve_task,
                                  run_info)
from headplast.store import layout, records
from headplast.store.io import atomic_write_json, atomic_write_text

OUTPUTS = (*layout.COMPARE_FIGURES, layout.COMPARE_METRICS, layout.COMPARE_SUMMARY)


@dataclass(frozen=True)
class CompareConfig:
    task: str | None = option(None, "GLUE task (default: the one task with runs under --output-root)")
    seed: int = option(1, "seed of the two runs", **NONNEGATIVE)
    labels: tuple[str, ...] = option(("FFT", "LoRA_r8"), "the two runs, e.g. FFT LoRA_r8")
    output_root: str = option("outputs", "root under which runs are found and written")
    out_dir: str | None = option(None, "default: <output-root>/COMPARE/<task>/seed<seed>", aliases=("--out_dir",))
    analysis: AnalysisConfig = field(default=AnalysisConfig(), metadata=opt(cli=False))
    force: bool = option(False, "redo even if up to date")

    def __post_init__(self):
        validate(self)

    def out(self) -> Path:
        return Path(self.out_dir) if self.out_dir else layout.compare_dir(self.output_root, self.task, self.seed)


def run_compare(cfg: CompareConfig) -> Outcome:
    cfg = replace(cfg, task=resolve_task(cfg.output_root, cfg.task))
    if len(cfg.labels) != 2:
        raise HeadplastError("compare takes exactly two runs", "e.g. --labels FFT LoRA_r8")
    dirs = {lab: measured_run(cfg.output_root, cfg.task, lab, cfg.seed) for lab in cfg.labels}
    out = cfg.out()
    key = records.step_key("compare", {"labels": list(cfg.labels), "analysis": asdict(cfg.analysis)},
                           {lab: input_hashes(d) for lab, d in dirs.items()})
    return recorded_step(out, "compare", key, OUTPUTS, lambda: _write_compare(cfg, dirs, out), cfg.force,
                         lambda: str(out))


def _write_compare(cfg: CompareConfig, dirs: dict, out: Path) -> None:
    infos = {lab: run_info(d) for lab, d in dirs.items()}
    check_comparable(list(infos.values()), "compare")
    dfs, stats, cases = {}, {}, {}
    for lab, d in dirs.items():
        dfs[lab], stats[lab], cases[lab] = analysed(d, cfg.analysis)
    a = cfg.analysis
    keys = key_statistics(dfs, a.top_k, a.top_quantile, a.bottom_quantile, a.n_boot, a.seed,
                          per_example={lab: load_per_example(d) for lab, d in dirs.items()},
                          n_boot_examples=a.n_boot_examples)
    n = len(next(iter(dfs.values())))
    first = infos[cfg.labels[0]]
    val = {lab: infos[lab]["val_metric"] for lab in cfg.labels}
    val.update(metric_name=first["val_metric_name"], theta0=first["val_metric_theta0"], majority=first["majority"])
    m = {"task": cfg.task, "seed": cfg.seed, "labels": list(cfg.labels), "n_heads": n, "k": a.top_k,
         "eval_subset_size": first["subset_size"], "topk_chance": min(a.top_k, n) / n,
         "expected_cases": cases[cfg.labels[0]]["important_but_static"]["expected_if_independent"],
         "runs": infos, "validation": val, "key_statistics": keys, "stats": stats, "cases": cases,
         "analysis_config": asdict(a)}
    m["findings"] = findings(keys, tuple(cfg.labels), stats, val, a.top_k)
    m["headline"] = headline(m)
    names = dict(zip(("i_vs_u", "stats", "update_dist", "headwise"), layout.COMPARE_FIGURES))
    cp.compare_i_vs_u(dfs, stats, out / names["i_vs_u"])
    cp.compare_stats(m, stats, out / names["stats"])
    cp.compare_update_dist(dfs, out / names["update_dist"])
    cp.compare_headwise(dfs, out / names["headwise"])
    atomic_write_json(out / layout.COMPARE_METRICS, m)
    atomic_write_text(out / layout.COMPARE_SUMMARY, compare_summary(m))
