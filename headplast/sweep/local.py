"""--engine local: one job after another in this process, printed as `headplast pipeline` prints."""

from __future__ import annotations

from headplast.errors import HeadplastError
from headplast.steps.sweep_jobs import is_done, run_job, runs_of


def check(cfg) -> None:
    """Nothing to check: no dependency."""


def run(cfg, todo, jobs) -> None:
    for job in todo:
        if job.train is None and not all(is_done(j, jobs) for j in runs_of(job, jobs)):
            print(f"\nskipped {job.name}: some of its runs are not done (failed, or running elsewhere)",
                  flush=True)
            continue
        print(f"\n##### job {job.name}", flush=True)
        try:
            run_job(job, jobs, "local", cfg.threads(), echo=True)
        except HeadplastError as e:  # the others still run; the status table names it
            print(f"##### job {job.name} failed: {e.problem}", flush=True)


def resolve(cfg):
    """Jobs run in this process with what it sees: nothing to resolve."""
    return cfg


def close() -> None:
    """Nothing held."""
