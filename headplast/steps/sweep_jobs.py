"""The jobs of a sweep, what state each is in, and running one job (whichever engine runs it).

A run job is train -> measure -> analyse of one run; a cross-run job is every comparison,
rank comparison and aggregate of one task, once all its runs are done. A job's bookkeeping
(state.json, log.txt) lives in <root>/_sweep/jobs/<name>/, locked while the job runs; its
results live where `headplast pipeline` writes them. A job is done when its state records
the current job key and the records of its steps still match their outputs (the freshness
rule), so a rerun of a sweep does only what is missing, outdated or failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from headplast.errors import HeadplastError
from headplast.steps import versions
from headplast.steps.analyse_step import analyse_key
from headplast.steps.pipeline import PipelineConfig, Runner, cross_run_task, one_run
from headplast.steps.train_step import resolved_config, run_id, train_key
from headplast.store import layout, locks, records
from headplast.store.io import atomic_write_json, read_json, text_key
from headplast.train.config import TrainConfig


@dataclass(frozen=True)
class Job:
    name: str  # also its folder under <root>/_sweep/jobs/
    root: str  # the sweep's output root (absolute)
    pipeline: PipelineConfig  # its train.output_root is where this job's model writes
    task: str
    train: TrainConfig | None = None  # None: the task's cross-run job

    @property
    def dir(self) -> Path:
        return layout.job_dir(self.root, self.name)

    @property
    def run_dir(self) -> Path | None:
        return None if self.train is None else layout.run_dir(self.pipeline.train.output_root, run_id(self.train))


def _absolute(cfg: PipelineConfig, root: Path, model: str | None) -> PipelineConfig:
    """Workers start in other folders (Ray's session dir, SLURM's submit dir): paths are made absolute."""
    t = cfg.train
    files = {k: str(Path(getattr(t, k)).resolve()) for k in ("train_file", "validation_file") if getattr(t, k)}
    if model and Path(model).is_dir():
        model = str(Path(model).resolve())
    return replace(cfg, train=replace(t, output_root=str(root), model=model, **files))


def model_roots(root: Path, models: tuple[str, ...]) -> dict[str | None, Path]:
    """{model: its output root}: the root itself for one model, <root>/<model name>/ for several."""
    if len(models) <= 1:
        return {(models[0] if models else None): root}
    names = {m: re.sub(r"[^A-Za-z0-9._-]+", "_", Path(m.rstrip("/")).name) for m in models}
    if len(set(names.values())) < len(names):
        raise HeadplastError(f"--models {' '.join(models)} give two models the same folder name",
                             "pass models whose last path components differ (or sweep them into separate "
                             "--output-root folders)")
    return {m: root / names[m] for m in models}


def plan(cfg: PipelineConfig, models: tuple[str, ...] = ()) -> list[Job]:
    """Every job of a sweep: per model and task, one job per run, then the task's cross-run job."""
    root = Path(cfg.train.output_root).resolve()
    models = models or ((cfg.train.model,) if cfg.train.model else ())
    jobs = []
    for model, mroot in model_roots(root, models).items():
        mcfg = _absolute(cfg, mroot, model)
        prefix = "" if mroot == root else f"{mroot.name}__"
        for task in cfg.tasks:
            runs = [t for seed in cfg.seeds for t in mcfg.run_configs(task, seed)]
            name = run_id(runs[0]).task
            jobs += [Job(f"{prefix}{run_id(t).label}_{name}_seed{t.seed}", str(root), mcfg, name, t) for t in runs]
            jobs.append(Job(f"{prefix}cross-run_{name}", str(root), mcfg, name))
    return jobs


def runs_of(job: Job, jobs: list[Job]) -> list[Job]:
    """The run jobs a cross-run job reads."""
    return [j for j in jobs if j.train is not None and j.task == job.task and j.pipeline == job.pipeline]


def job_key(job: Job, jobs: list[Job]) -> str:
    p = job.pipeline
    if job.train is None:
        return text_key({"runs": [job_key(j, jobs) for j in runs_of(job, jobs)], "analysis": asdict(p.analysis),
                         "tasks": list(p.tasks), "seeds": list(p.seeds), "versions": versions.every_version()})
    return text_key({"train": train_key(resolved_config(job.train)[0]), "measure": asdict(p.measure),
                     "analysis": asdict(p.analysis), "versions": versions.every_version()})


def read_state(job: Job) -> dict:
    p = job.dir / layout.JOB_STATE
    try:
        return read_json(p) if p.exists() else {}
    except HeadplastError:
        return {}  # unreadable: the job is redone


def write_state(job: Job, **fields) -> dict:
    state = {**read_state(job), "job": job.name, **fields}
    atomic_write_json(job.dir / layout.JOB_STATE, state)
    return state


def is_done(job: Job, jobs: list[Job], state: dict | None = None) -> bool:
    """Finished for the current settings, and nothing it wrote altered since."""
    state = read_state(job) if state is None else state
    if state.get("status") != "done" or state.get("key") != job_key(job, jobs):
        return False
    if job.train is None:
        return all(_step_intact(Path(job.root) / folder, step) for folder, step in state.get("outputs", [])) and \
            all(is_done(r, jobs) for r in runs_of(job, jobs))
    d = job.run_dir
    try:
        return records.freshness(d, "train", train_key(resolved_config(job.train)[0])).fresh and \
            records.freshness(d, "analyse", analyse_key(d, job.pipeline.analysis)).fresh
    except HeadplastError:  # a measurement file altered or missing
        return False


def _step_intact(folder: Path, step: str) -> bool:
    rec = records.read_record(folder, step)
    return rec is not None and not records.changed_outputs(folder, rec)


def _last_line(e: BaseException) -> str:
    text = f"{getattr(e, 'problem', None) or e}".strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"


@contextlib.contextmanager
def captured(log: Path, echo: bool):
    """Everything the job prints goes to its log; echo=True also keeps it on the console (local
    engine), otherwise the process's stdout/stderr descriptors are pointed at the log (workers)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}\n")
        if echo:
            out, err = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = _Tee(out, f), _Tee(err, f)
            try:
                yield f
            finally:
                sys.stdout, sys.stderr = out, err
            return
        sys.stdout.flush(), sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            yield f
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()

    def isatty(self):
        return False


def run_job(job: Job, jobs: list[Job], engine: str = "local", threads: int | None = None, echo: bool = True,
            engine_id: str | None = None) -> dict:
    """Run one job unless it is done; returns its final state. The job's folder is locked while it
    runs, so a second engine or sweep starting the same job waits, then finds it done."""
    with locks.hold(job.dir, f"sweep job {job.name}"):
        state = read_state(job)
        if not job.pipeline.force and is_done(job, jobs, state):
            return state
        if threads:  # torch's CPU kernels sum in an order that depends on the thread count
            import torch
            torch.set_num_threads(threads)
        log = job.dir / layout.JOB_LOG
        write_state(job, status="running", engine=engine, engine_id=engine_id, host=socket.gethostname(),
                    pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None,
                    attempt=int(state.get("attempt", 0)) + 1, log=str(log))
        runner, t = Runner(None), time.time()
        with captured(log, echo):
            try:
                outputs = _execute(job, jobs, runner)
            except BaseException as e:
                traceback.print_exc()
                write_state(job, status="failed", error=_last_line(e), steps=runner.log,
                            seconds=round(time.time() - t, 1))
                raise
        return write_state(job, status="done", key=job_key(job, jobs), steps=runner.log, outputs=outputs,
                           seconds=round(time.time() - t, 1), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _execute(job: Job, jobs: list[Job], runner: Runner) -> list:
    """The job's steps; returns [folder relative to the root, step] of what it wrote."""
    if job.train is not None:
        d = str(one_run(runner, job.pipeline, job.train).relative_to(job.root))
        return [[d, "train"], [d, "analyse"]]
    missing = [j.name for j in runs_of(job, jobs) if not is_done(j, jobs)]
    if missing:
        raise HeadplastError(f"{job.name} needs runs that are not done: {', '.join(missing)}",
                             "run the sweep again: it redoes only what is missing or failed")
    out = cross_run_task(runner, job.pipeline, job.task)
    steps = {"compare": "compare", "ranks": "ranks", "aggregate": "aggregate"}
    return [[str(p.relative_to(job.root)), steps[k]] for k, paths in out.items() for p in paths]


@dataclass(frozen=True)
class JobStatus:
    job: str
    status: str  # done | running | pending | failed
    detail: str = ""
    log: str | None = None
    active: bool = False  # running, or waiting in a batch system's queue: not to be submitted again


def job_status(job: Job, jobs: list[Job], queue: dict[str, str] | None = None) -> JobStatus:
    """Where a job stands. queue: {engine job id: 'pending' | 'running'} of the batch system, if any."""
    state = read_state(job)
    log = str(job.dir / layout.JOB_LOG) if state else None
    if is_done(job, jobs, state):
        where = job.run_dir or ", ".join(sorted({f for f, _ in state["outputs"]}))
        return JobStatus(job.name, "done", f"{state.get('seconds', '?')} s  {where}", log)
    holder = locks.holder(job.dir)
    if holder:
        return JobStatus(job.name, "running", locks.describe(holder), log, active=True)
    queued = (queue or {}).get(state.get("engine_id") or "")
    if queued and state.get("status") in ("submitted", "running"):
        return JobStatus(job.name, queued, f"{state.get('engine')} job {state['engine_id']}", log, active=True)
    if state.get("status") == "failed":
        return JobStatus(job.name, "failed", state.get("error") or "", log)
    if state.get("status") == "running":
        return JobStatus(job.name, "failed", "stopped without finishing (killed, cancelled, out of time or its "
                         f"node failed; attempt {state.get('attempt', 1)})", log)
    if state.get("status") == "submitted" and queue is not None:
        return JobStatus(job.name, "failed", f"{state.get('engine')} job {state.get('engine_id')} left the queue "
                         "without starting (cancelled?)", log)
    if state.get("status") == "done":
        return JobStatus(job.name, "pending", "outdated: settings or inputs changed since it ran", log)
    return JobStatus(job.name, "pending", "submitted" if state.get("status") == "submitted" else "", log)


def mark_submitted(job: Job, engine: str, engine_id: str) -> None:
    job.dir.mkdir(parents=True, exist_ok=True)
    write_state(job, status="submitted", engine=engine, engine_id=engine_id, error=None,
                submitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def record_sweep(root: str | Path, config: dict) -> None:
    atomic_write_json(layout.sweep_dir(root) / layout.SWEEP_CONFIG,
                      {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": config})


def recorded_sweep(root: str | Path) -> dict | None:
    p = layout.sweep_dir(root) / layout.SWEEP_CONFIG
    return read_json(p, "the recorded sweep") if p.exists() else None
