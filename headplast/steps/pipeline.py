"""`headplast pipeline`: the guide's whole experiment in one command.

For each task and seed: FFT train -> measure -> plots; LoRA (each rank) train -> measure
-> plots; compare FFT vs each LoRA rank. Then, with several seeds, aggregate across
seeds; with several ranks, compare ranks. Every step follows the freshness rule, so an
interrupted pipeline resumes where it stopped; --force redoes everything. Each step's
outcome (ran, skipped, failed) goes to pipeline_log.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from headplast.analysis.config import AnalysisConfig
from headplast.arch.loading import resolve_model
from headplast.data.prepare import prepare_from_config
from headplast.data.tasks import DEFAULT_TASK
from headplast.errors import HeadplastError
from headplast.measure.config import MeasureConfig
from headplast.options import NONNEGATIVE, POSITIVE, opt, option, validate
from headplast.report.lines import timings_line
from headplast.steps.across_steps import AggregateConfig, RanksConfig, run_aggregate, run_ranks
from headplast.steps.analyse_step import run_analyse
from headplast.steps.compare_step import CompareConfig, run_compare
from headplast.steps.measure_step import run_measure
from headplast.steps.outcome import Outcome
from headplast.steps.report_step import ReportConfig, run_report
from headplast.steps.train_step import run_id, run_train
from headplast.store import layout
from headplast.store.io import atomic_write_json, check_output_root
from headplast.train.config import METHODS, TrainConfig
from headplast.train.recipes import resolve


@dataclass(frozen=True)
class PipelineConfig:
    # template for every run: task, seed, method, rank and alpha are set per run
    train: TrainConfig = field(default=TrainConfig(), metadata=opt(cli=False))
    measure: MeasureConfig = field(default=MeasureConfig(), metadata=opt(cli=False))
    analysis: AnalysisConfig = field(default=AnalysisConfig(), metadata=opt(cli=False))
    tasks: tuple[str, ...] = option((DEFAULT_TASK,), "GLUE tasks", aliases=("--task",))
    seeds: tuple[int, ...] = option((1,), "seeds (several: aggregated across seeds)", aliases=("--seed",), **NONNEGATIVE)
    methods: tuple[str, ...] = option(METHODS, "fft and/or lora", choices=METHODS)
    ranks: tuple[int, ...] = option((8,), "LoRA ranks (several: compared across ranks)", aliases=("--lora-r",), **POSITIVE)
    lora_alpha: float | None = option(None, "LoRA alpha of every rank (default: 2 * r each, as train's --lora-alpha)",
                                      **POSITIVE)
    force: bool = option(False, "redo every step even if up to date")

    def __post_init__(self):
        validate(self)

    def run_configs(self, task: str, seed: int) -> list[TrainConfig]:
        base = replace(self.train, task=task, seed=seed, force=self.force)
        out = [replace(base, method="fft")] if "fft" in self.methods else []
        if "lora" in self.methods:
            out += [replace(base, method="lora", lora_r=r, lora_alpha=self.lora_alpha) for r in self.ranks]
        return out


class Runner:
    """Runs named steps, prints a header and a one-line result each, logs their outcomes."""

    def __init__(self, log_file: Path | None):
        self.log_file = log_file  # None: keep the log in memory only (a sweep job records its own)
        self.log: list[dict] = []
        self.unlogged = False

    def step(self, name: str, fn) -> Outcome:
        print(f"\n=== {name}", flush=True)
        t = time.time()
        try:
            r = fn()
        except (HeadplastError, KeyboardInterrupt) as e:
            self._log(name, "failed", time.time() - t, str(getattr(e, "problem", e)) or type(e).__name__)
            raise
        detail = r.detail or timings_line(r.timings)
        line = f"skipped (up to date; --force to redo): {detail}" if r.status == "skipped" else detail
        print(f"--- {name}: {line} [{time.time() - t:.1f}s]", flush=True)
        self._log(name, r.status, time.time() - t, detail)
        return r

    def _log(self, name, status, secs, detail):
        self.log.append({"step": name, "status": status, "seconds": round(secs, 2), "result": detail})
        if self.log_file is None:
            return
        try:
            atomic_write_json(self.log_file, {"steps": self.log})
        except OSError as e:  # a read-only copy of finished results: every step was only read
            if any(s["status"] == "ran" for s in self.log):
                raise
            if not self.unlogged:
                print(f"(not updating {self.log_file}: {e.strerror})", flush=True)
            self.unlogged = True


def one_run(runner: Runner, cfg: PipelineConfig, tcfg: TrainConfig) -> Path:
    """train -> measure -> analyse of one run (the unit of work of a sweep)."""
    run = run_id(tcfg)
    tag = f"{run.label} {run.task} seed {run.seed}"
    out = runner.step(f"train {tag}", lambda: run_train(tcfg)).path
    runner.step(f"measure {tag}", lambda: run_measure(out, cfg.measure, cfg.force))
    runner.step(f"plot {tag}", lambda: run_analyse(out, cfg.analysis, cfg.force))
    return out


def preflight(cfg: PipelineConfig) -> None:
    """Check every input (output root, data of each task, model) before any step runs."""
    check_output_root(cfg.train.output_root)
    for task in cfg.tasks:
        prepare_from_config(resolve(cfg.run_configs(task, cfg.seeds[0])[0])[0])
    resolve_model(cfg.train.model)


def cross_run_seed(runner: Runner, cfg: PipelineConfig, task: str, seed: int) -> dict:
    """Compare FFT with each LoRA rank of one seed; with several ranks, compare the ranks."""
    root = Path(cfg.train.output_root)
    runs = [run_id(t) for t in cfg.run_configs(task, seed)]
    name, labels = runs[0].task, [r.label for r in runs]
    loras = [lab for lab in labels if lab != "FFT"]
    common = dict(output_root=str(root), analysis=cfg.analysis, force=cfg.force)
    out: dict = {"compare": [], "ranks": []}
    for lab in loras if "FFT" in labels else []:
        r = layout.parse_label(lab)[1]
        where = layout.compare_dir(root, name, seed, r if len(loras) > 1 else None)
        c = CompareConfig(name, seed, ("FFT", lab), out_dir=str(where), **common)
        step = runner.step(f"compare FFT vs {lab} {name} seed {seed}", lambda c=c: run_compare(c))
        out["compare"].append(step.path)
    if len(loras) > 1:  # one folder per task and seed when there are several (else the guide's)
        several = len(cfg.tasks) > 1 or len(cfg.seeds) > 1
        where = layout.rank_dir(root, name, seed) if several else layout.rank_dir(root)
        rc = RanksConfig(name, seed, tuple(cfg.ranks), out_dir=str(where), **common)
        out["ranks"].append(runner.step(f"ranks {name} seed {seed}", lambda: run_ranks(rc)).path)
    return out


def aggregate_seeds(runner: Runner, cfg: PipelineConfig, task: str) -> list[Path]:
    """With several seeds: every statistic across seeds (MULTI_SEED/)."""
    if len(cfg.seeds) < 2:
        return []
    runs = [run_id(t) for t in cfg.run_configs(task, cfg.seeds[0])]
    root, name = cfg.train.output_root, runs[0].task
    where = layout.multi_seed_dir(root, name if len(cfg.tasks) > 1 else None)
    ac = AggregateConfig(name, tuple(r.label for r in runs), tuple(cfg.seeds), output_root=root,
                         out_dir=str(where), analysis=cfg.analysis, force=cfg.force)
    return [runner.step(f"aggregate {ac.task} seeds {list(cfg.seeds)}", lambda: run_aggregate(ac)).path]


def cross_run_task(runner: Runner, cfg: PipelineConfig, task: str) -> dict:
    """Every step that reads several runs of a task: each seed's comparisons, then the aggregate."""
    out: dict = {"compare": [], "ranks": []}
    for seed in cfg.seeds:
        for k, v in cross_run_seed(runner, cfg, task, seed).items():
            out[k] += v
    out["aggregate"] = aggregate_seeds(runner, cfg, task)
    return out


def run_pipeline(cfg: PipelineConfig) -> dict:
    preflight(cfg)
    root = Path(cfg.train.output_root)
    if not root.exists():
        root.mkdir(parents=True)
    runner = Runner(root / layout.PIPELINE_LOG)
    outputs: dict = {"runs": [], "compare": [], "aggregate": [], "ranks": []}
    for task in cfg.tasks:  # every run of a task first: a comparison's noise floor is another seed's runs
        for seed in cfg.seeds:
            outputs["runs"] += [one_run(runner, cfg, t) for t in cfg.run_configs(task, seed)]
        for k, v in cross_run_task(runner, cfg, task).items():
            outputs[k] += v
    outputs["report"] = runner.step("report", lambda: run_report(ReportConfig(str(root)), cfg.force)).path
    outputs["log"] = runner.log
    return outputs
