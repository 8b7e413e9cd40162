"""`headplast sweep`: plan the jobs, skip what is done or already running, hand the rest to an engine,
end with the status table."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from headplast.options import config_from_dict
from headplast.report.sweep_table import status_table
from headplast.steps.pipeline import preflight
from headplast.steps.report_step import ReportConfig, run_report
from headplast.steps.sweep_jobs import Job, job_status, plan, record_sweep, recorded_sweep
from headplast.sweep import local, ray_engine, slurm_engine
from headplast.sweep.config import SweepConfig

ENGINES = {"local": local, "ray": ray_engine, "slurm": slurm_engine}


def statuses(jobs: list[Job]) -> list:
    q = slurm_engine.queue()
    return [job_status(j, jobs, q) for j in jobs]


def run_sweep(cfg: SweepConfig) -> dict:
    """Returns {"jobs": [JobStatus], "submitted": [job names], "table": text, "reports": [HTML paths]}."""
    root = str(Path(cfg.pipeline.train.output_root).resolve())  # workers start elsewhere
    cfg = replace(cfg, pipeline=replace(cfg.pipeline, train=replace(cfg.pipeline.train, output_root=root)))
    if cfg.status:
        return _status(cfg)
    engine = ENGINES[cfg.engine]
    engine.check(cfg)
    cfg = engine.resolve(cfg)  # defaults that depend on the hardware: once, recorded below
    try:
        return _run(cfg, engine)
    finally:
        engine.close()


def _run(cfg: SweepConfig, engine) -> dict:
    jobs = plan(cfg.pipeline, cfg.models)
    for p in dict.fromkeys(j.pipeline for j in jobs):  # every input checked before any job starts
        preflight(p)
    record_sweep(cfg.pipeline.train.output_root, asdict(cfg))
    before = {s.job: s for s in statuses(jobs)}
    todo = [j for j in jobs if not before[j.name].active
            and (cfg.pipeline.force or before[j.name].status in ("pending", "failed"))]
    print(f"sweep: {len(jobs)} jobs ({sum(j.train is not None for j in jobs)} runs): {len(todo)} to do, "
          f"{sum(s.status == 'done' for s in before.values())} done, "
          f"{sum(s.active for s in before.values())} already queued or running (engine {cfg.engine})", flush=True)
    if todo:
        engine.run(cfg, todo, jobs)
    rows = statuses(jobs)
    reports = []
    if {r.status for r in rows} == {"done"}:  # everything finished: one report per model's root
        reports = [run_report(ReportConfig(output_root=str(r)), cfg.pipeline.force).path
                   for r in dict.fromkeys(Path(j.pipeline.train.output_root) for j in jobs)]
    return {"jobs": rows, "submitted": [j.name for j in todo], "table": status_table(rows), "reports": reports}


def _status(cfg: SweepConfig) -> dict:
    """The jobs of the last sweep started under --output-root (its recorded flags), else of these flags."""
    recorded = recorded_sweep(cfg.pipeline.train.output_root)
    head = ""
    if recorded:
        cfg = config_from_dict(SweepConfig, recorded["config"])
        head = f"sweep started {recorded['started']} under {cfg.pipeline.train.output_root}\n"
    jobs = plan(cfg.pipeline, cfg.models)
    rows = statuses(jobs)
    return {"jobs": rows, "submitted": [], "table": head + status_table(rows), "reports": []}
