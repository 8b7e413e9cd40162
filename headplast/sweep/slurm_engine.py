"""--engine slurm: the run jobs as one SLURM job array through submitit, the cross-run jobs as
jobs that start after the array ends (afterany). Without --wait the sweep returns once they are
submitted; `headplast sweep --status` follows them, and running the sweep again submits only
what is missing or failed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time

from headplast.errors import HeadplastError
from headplast.steps.sweep_jobs import mark_submitted, read_state, runs_of
from headplast.store import layout

QUEUED = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
          "REQUEUE_FED": "pending", "RESIZING": "pending", "RUNNING": "running", "COMPLETING": "running",
          "SUSPENDED": "running", "STAGE_OUT": "running", "SIGNALING": "running"}


def queue() -> dict[str, str] | None:
    """{job id ('123' or '123_4'): 'pending' | 'running'} of jobs in SLURM's queue; None without SLURM."""
    if not shutil.which("squeue"):
        return None
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return None
    rows = (line.split("|") for line in r.stdout.splitlines() if "|" in line)
    return {i.strip(): QUEUED[s.strip()] for i, s in rows if s.strip() in QUEUED}


def check(cfg) -> None:
    """Before any job: submitit is installed and SLURM's sbatch is on PATH."""
    if importlib.util.find_spec("submitit") is None:
        raise HeadplastError("--engine slurm needs submitit, which is not installed",
                             "pip install 'headplast[slurm]' (or pip install submitit)")
    if not shutil.which("sbatch"):
        raise HeadplastError("--engine slurm needs SLURM's sbatch, which is not on PATH",
                             "run on a SLURM login node, or start the one-node SLURM of "
                             "deploy/slurm/local-cluster.sh start (as root)")


def parameters(cfg, threads: int, gpus: int) -> dict:
    """submitit's SlurmExecutor parameters of a job given `threads` CPUs and `gpus` GPUs.

    GPUs go per task (--gpus-per-task, with one task per job) rather than per node, so SLURM binds
    each job's task to exactly its GPUs. A job given none is started with CUDA_VISIBLE_DEVICES=""
    (exported before srun, which passes it on): on a node with GPUs but no GPU confinement it would
    otherwise see all of them. How many GPUs the compute nodes have, this machine cannot tell:
    --slurm-gpus-per-job is taken as given."""
    params = dict(job_name="headplast", time=cfg.slurm_time, cpus_per_task=threads, partition=cfg.slurm_partition,
                  mem=cfg.slurm_mem, account=cfg.slurm_account, array_parallelism=cfg.slurm_array_parallelism,
                  ntasks_per_node=1, additional_parameters=cfg.sbatch_options())
    if gpus:
        params["gpus_per_task"] = gpus
    else:
        params["setup"] = ["export CUDA_VISIBLE_DEVICES="]
    return {k: v for k, v in params.items() if v is not None}


def _executor(cfg, root, threads: int, gpus: int):
    import submitit

    ex = submitit.SlurmExecutor(folder=str(layout.engine_log_dir(root, "slurm") / "%j"), max_num_timeout=3)
    ex.update_parameters(**parameters(cfg, threads, gpus))
    return ex


def run(cfg, todo, jobs) -> list[str]:
    """Submit; returns the SLURM job ids. With --wait, returns when none of them is queued any more."""
    from headplast.sweep.slurm_worker import SlurmWork

    root, threads = todo[0].root, cfg.threads()
    runs, cross = [j for j in todo if j.train is not None], [j for j in todo if j.train is None]
    ids = []
    if runs:
        gpus = cfg.slurm_gpus_per_job
        ex = _executor(cfg, root, threads, gpus)
        array = ex.map_array(SlurmWork(), runs, [jobs] * len(runs), [threads] * len(runs), [gpus] * len(runs))
        for job, sj in zip(runs, array):
            mark_submitted(job, "slurm", sj.job_id)
        ids += [sj.job_id for sj in array]
        print(f"slurm: submitted {len(runs)} run jobs as array {array[0].job_id.split('_')[0]}", flush=True)
    queued = queue() or {}
    for job in cross:  # after every run it reads that is in the queue: this array, an earlier one
        engine_ids = [read_state(r).get("engine_id") or "" for r in runs_of(job, jobs)]
        after = sorted({i.split("_")[0] for i in ids} | {e.split("_")[0] for e in engine_ids if e in queued})
        ex = _executor(cfg, root, threads, 0)  # a cross-run job reads the runs' results: no GPU
        if after:
            ex.update_parameters(dependency="afterany:" + ":".join(after))
        sj = ex.submit(SlurmWork(), job, jobs, threads, 0)
        mark_submitted(job, "slurm", sj.job_id)
        ids.append(sj.job_id)
        print(f"slurm: submitted {job.name} as job {sj.job_id}" + (f" (after {', '.join(after)})" if after else ""),
              flush=True)
    if cfg.wait:
        _wait(ids)
    return ids


def _wait(ids: list[str]) -> None:
    """Poll squeue until none of `ids` (or their array tasks) is queued."""
    arrays = {i.split("_")[0] for i in ids}
    last, t = None, time.time()
    while True:
        q = queue() or {}
        mine = {i: s for i, s in q.items() if i in ids or i.split("_")[0] in arrays}
        states = list(mine.values())
        counts = f"{states.count('running')} running, {states.count('pending')} pending"
        if counts != last:
            print(f"[{time.time() - t:6.0f}s] slurm: {counts}", flush=True)
            last = counts
        if not mine:
            return
        time.sleep(2)


def resolve(cfg):
    """What the compute nodes have, this machine cannot tell: the SLURM options are taken as given."""
    return cfg


def close() -> None:
    """Nothing held."""
