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
    lora_alpha: float | None = option(None, "LoRA alpha (default: 2 * r, as the guide does)", **POSITIVE)
    force: bool = option(False, "redo every step even if up to date")

    def __post_init__(self):
        validate(self)

    def run_configs(self, task: str, seed: int) -> list[TrainConfig]:
        base = replace(self.train, task=task, seed=seed, force=self.force)
        out = [replace(base, method="fft")] if "fft" in self.methods else []
        if "lora" in self.methods:
            out += [replace(base, method="lora", lora_r=r,
                            lora_alpha=self.lora_alpha if self.lora_alpha is not None else 2.0 * r)
                    for r in self.ranks]
        return out


class Runner:
    """Runs named steps, prints a header and a one-line result each, logs their outcomes."""

    def __init__(self, root: Path):
        self.root = root
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
        try:
            atomic_write_json(self.root / layout.PIPELINE_LOG, {"steps": self.log})
        except OSError as e:  # a read-only copy of finished results: every step was only read
            if any(s["status"] == "ran" for s in self.log):
                raise
            if not self.unlogged:
                print(f"(not updating {self.root / layout.PIPELINE_LOG}: {e.strerror})", flush=True)
            self.unlogged = True


def _one_run(runner: Runner, cfg: PipelineConfig, tcfg: TrainConfig) -> Path:
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


def run_pipeline(cfg: PipelineConfig) -> dict:
    preflight(cfg)
    root = Path(cfg.train.output_root)
    if not root.exists():
        root.mkdir(parents=True)
    runner = Runner(root)
    outputs: dict = {"runs": [], "compare": [], "aggregate": [], "ranks": []}
    common = dict(output_root=str(root), analysis=cfg.analysis, force=cfg.force)
    for task in cfg.tasks:
        labels: dict[str, None] = {}
        for seed in cfg.seeds:
            runs = {run_id(t).label: t for t in cfg.run_configs(task, seed)}
            for tcfg in runs.values():
                outputs["runs"].append(_one_run(runner, cfg, tcfg))
            labels.update(dict.fromkeys(runs))
            name = run_id(next(iter(runs.values()))).task
            loras = [lab for lab in runs if lab != "FFT"]
            for lab in loras if "FFT" in runs else []:
                r = layout.parse_label(lab)[1]
                out = layout.compare_dir(root, name, seed, r if len(loras) > 1 else None)
                c = CompareConfig(name, seed, ("FFT", lab), out_dir=str(out), **common)
                outputs["compare"].append(runner.step(f"compare FFT vs {lab} {name} seed {seed}",
                                                      lambda c=c: run_compare(c)).path)
            if len(loras) > 1:
                rc = RanksConfig(name, seed, tuple(cfg.ranks), **common)
                outputs["ranks"].append(runner.step(f"ranks {name} seed {seed}", lambda rc=rc: run_ranks(rc)).path)
        if len(cfg.seeds) > 1:
            ac = AggregateConfig(name, tuple(labels), tuple(cfg.seeds), **common)
            outputs["aggregate"].append(runner.step(f"aggregate {name} seeds {list(cfg.seeds)}",
                                                    lambda ac=ac: run_aggregate(ac)).path)
    outputs["log"] = runner.log
    return outputs
