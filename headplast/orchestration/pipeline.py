"""`headplast pipeline`: the guide's whole experiment in one command.

For each task and seed: FFT train -> measure -> plots; LoRA (each rank) train -> measure
-> plots; compare FFT vs each LoRA rank. Then, with several seeds, aggregate across
seeds; with several ranks, compare ranks. Finished steps are skipped, so an interrupted
pipeline resumes where it stopped; --force redoes everything.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from headplast.analysis.run_analysis import AnalysisConfig, write_run_analysis
from headplast.orchestration import layout
from headplast.orchestration.io import atomic_write_json
from headplast.orchestration.measure_step import MeasureConfig, run_measure
from headplast.train.config import TrainConfig
from headplast.train.run import run_train



@dataclass(frozen=True)
class PipelineConfig:
    train: TrainConfig = TrainConfig()  # template: task, seed, method and rank are set per step
    measure: MeasureConfig = MeasureConfig(run_dir="")
    analysis: AnalysisConfig = AnalysisConfig()
    tasks: tuple[str, ...] = ("RTE",)
    seeds: tuple[int, ...] = (1,)
    methods: tuple[str, ...] = ("fft", "lora")
    ranks: tuple[int, ...] = (8,)
    lora_alpha: float | None = None  # None: 2 * r, as the guide does
    force: bool = False


def _stale(outputs: list[Path], inputs: list[Path]) -> bool:
    if not all(p.exists() for p in outputs):
        return True
    newest_in = max((p.stat().st_mtime for p in inputs if p.exists()), default=0)
    return min(p.stat().st_mtime for p in outputs) < newest_in


class Runner:
    """Runs named steps, prints a header and a one-line result each, records times."""

    def __init__(self, root: Path):
        self.root = root
        self.log: list[dict] = []

    def step(self, name: str, fn, result=lambda r: ""):
        print(f"\n=== {name}", flush=True)
        t = time.time()
        r = fn()
        secs = time.time() - t
        line = result(r) if r is not None else "skipped (up to date; --force to redo)"
        print(f"--- {name}: {line} [{secs:.1f}s]", flush=True)
        self.log.append({"step": name, "seconds": round(secs, 2), "result": line})
        atomic_write_json(self.root / "pipeline_log.json", {"steps": self.log})
        return r


def _train_line(out: Path) -> str:
    rc = json.loads((out / layout.RUN_CONFIG).read_text())
    v = rc["validation"]
    return (f"{v['theta1']['metric_name']} {v['theta0']['metric']:.4f} -> {v['theta1']['metric']:.4f} "
            f"(majority {v['majority_baseline']:.4f}{', COLLAPSED' if rc['collapsed'] else ''})")


def _analyse_step(run: Path, cfg: PipelineConfig):
    inputs = [run / n for n in (*layout.IMPORTANCE.values(), layout.GRADFISHER, layout.UPDATE)]
    outputs = [run / layout.STATS, run / layout.CASES, run / layout.HEADS_CSV] + [run / f for f in
                                                                                  layout.RUN_FIGURES]
    if not cfg.force and not _stale(outputs, inputs):
        return None
    st = write_run_analysis(run, cfg.analysis)
    return st["pairs"].get("I_pre~U", {})


def _rho_line(p: dict) -> str:
    lo, hi = p.get("ci95", [float("nan")] * 2)
    return f"rho(I_pre, U) = {p.get('spearman', float('nan')):.3f}, 95% CI [{lo:.3f}, {hi:.3f}]"


def _one_run(runner: Runner, cfg: PipelineConfig, tcfg: TrainConfig) -> Path:
    label = "FFT" if tcfg.method == "fft" else f"LoRA_r{tcfg.lora_r}"
    tag = f"{label} {tcfg.task} seed {tcfg.seed}"
    out = runner.step(f"train {tag}", lambda: run_train(tcfg), _train_line)
    runner.step(f"measure {tag}", lambda: run_measure(replace(cfg.measure, run_dir=str(out), force=cfg.force)),
                lambda t: ", ".join(f"{k} {v}{'s' if isinstance(v, float) else ''}" for k, v in t.items()))
    runner.step(f"plot {tag}", lambda: _analyse_step(out, cfg),
                _rho_line)
    return out


def _compare_step(c, force: bool):
    """Compare two runs unless the comparison is newer than both runs' measurements."""
    from headplast.orchestration.compare_step import run_compare

    out = layout.compare_dir(c.output_root, c.task, c.seed)
    runs = []
    for lab in c.labels:
        method, r = layout.parse_label(lab)
        runs.append(layout.run_dir(c.output_root, layout.RunId(c.task, method, c.seed, r)))
    inputs = [d / n for d in runs for n in (layout.IMPORTANCE["post"], layout.UPDATE)]
    if not force and not _stale([out / "compare_metrics.json", out / "compare_summary.txt"], inputs):
        return None
    return run_compare(c)


def run_pipeline(cfg: PipelineConfig) -> dict:
    from headplast.orchestration.across_steps import AggregateConfig, RanksConfig, run_aggregate, run_ranks
    from headplast.orchestration.compare_step import CompareConfig

    root = Path(cfg.train.output_root)
    root.mkdir(parents=True, exist_ok=True)
    runner = Runner(root)
    outputs = {"runs": [], "compare": [], "aggregate": [], "ranks": []}
    labels = (["FFT"] if "fft" in cfg.methods else []) + \
             ([f"LoRA_r{r}" for r in cfg.ranks] if "lora" in cfg.methods else [])
    for task in cfg.tasks:
        for seed in cfg.seeds:
            base = replace(cfg.train, task=task, seed=seed, force=cfg.force)
            if "fft" in cfg.methods:
                outputs["runs"].append(_one_run(runner, cfg, replace(base, method="fft")))
            if "lora" in cfg.methods:
                for r in cfg.ranks:
                    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * r
                    outputs["runs"].append(_one_run(runner, cfg, replace(base, method="lora", lora_r=r,
                                                                        lora_alpha=alpha)))
            if "fft" in cfg.methods and "lora" in cfg.methods:
                for r in cfg.ranks:
                    c = CompareConfig(task, seed, ("FFT", f"LoRA_r{r}"), str(root), None, cfg.analysis)
                    runner.step(f"compare FFT vs LoRA_r{r} {task} seed {seed}",
                                lambda c=c: _compare_step(c, cfg.force), str)
                    outputs["compare"].append(layout.compare_dir(root, task, seed))
            if "lora" in cfg.methods and len(cfg.ranks) > 1:
                rc = RanksConfig(task, seed, tuple(cfg.ranks), str(root), None, cfg.analysis)
                outputs["ranks"].append(runner.step(f"ranks {task} seed {seed}", lambda rc=rc: run_ranks(rc), str))
        if len(cfg.seeds) > 1:
            ac = AggregateConfig(task, tuple(labels), tuple(cfg.seeds), str(root), None, False, cfg.analysis)
            outputs["aggregate"].append(runner.step(f"aggregate {task} seeds {list(cfg.seeds)}",
                                                    lambda ac=ac: run_aggregate(ac), str))
    outputs["log"] = runner.log
    return outputs
