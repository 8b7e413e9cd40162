"""What a worker process (a Ray worker, a SLURM job) does with a job."""

from __future__ import annotations

import os


def show_deprecations() -> None:
    """Python hides DeprecationWarning outside __main__; the libraries' own deprecations (the
    first notice of a private API the speed tricks use changing) are shown once per place."""
    import warnings

    warnings.filterwarnings("default", category=DeprecationWarning)
    warnings.filterwarnings("default", category=FutureWarning)


def quiet_libraries() -> None:
    """The libraries' own chatter off: our steps print what matters. Their deprecation and future
    warnings stay visible: they are the first notice of the private APIs the speed tricks use
    breaking."""
    from transformers.utils import logging as hf_logging

    show_deprecations()
    hf_logging.set_verbosity_error()  # e.g. the "classifier MISSING" load report of every θ0
    hf_logging.disable_progress_bar()  # per-file loading bars; our steps have their own


def hide_gpus(gpus: float | None) -> None:
    """A job given no GPU sees none, whatever the engine left visible (Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES alone at num_gpus=0; SLURM sets nothing for a job without GPUs): its steps
    then run on the CPU instead of on a GPU another job holds. Before torch initialises CUDA."""
    if gpus == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def work(job, jobs, engine: str, threads: int | None, engine_id: str | None = None,
         gpus: float | None = None) -> dict:
    """Run one job in this process, its output into the job's log; returns its state (small).
    gpus: the GPUs the engine gave the job (None: not known, the environment is left as it is)."""
    hide_gpus(gpus)
    from headplast.steps.sweep_jobs import run_job

    quiet_libraries()
    state = run_job(job, jobs, engine, threads, echo=False, engine_id=engine_id)
    return {"job": job.name, "status": state.get("status"), "seconds": state.get("seconds")}
