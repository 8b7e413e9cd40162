"""--engine ray: one Ray task per job. Results go to the output root (a shared file system on a
cluster), never through Ray's object store; a task whose worker died is retried (--max-retries),
which is safe because every step is idempotent and a dead holder's locks are broken."""

from __future__ import annotations

import os
import socket
import time

from headplast.errors import HeadplastError
from headplast.steps.sweep_jobs import is_done, runs_of
from headplast.sweep.worker import work


def _ray():
    try:
        import ray
    except ImportError:
        raise HeadplastError("--engine ray needs Ray, which is not installed",
                             "pip install 'headplast[ray]' (or pip install ray)") from None
    return ray


# Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a task given num_gpus=0, so it sees every GPU (and
# its steps would run on cuda:0 next to another job); with this set, Ray sets it to "" as it used to.
HIDE_UNASSIGNED_GPUS = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
_started = False  # this process started (or joined) Ray, so close() shuts it down (or leaves it)


def hardware() -> tuple[int, int]:
    """(CPUs, GPUs) of this machine: what the local Ray a sweep starts is given."""
    import torch

    return os.cpu_count() or 1, torch.cuda.device_count()


def _start(ray, cfg) -> None:
    """Join --ray-address, or start a local Ray sized to this machine (unless Ray is already up)."""
    global _started
    if ray.is_initialized():
        return
    env = {"env_vars": {"TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"), "TOKENIZERS_PARALLELISM": "false",
                        **HIDE_UNASSIGNED_GPUS}}
    if cfg.ray_address:
        try:
            ray.init(address=cfg.ray_address, runtime_env=env, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise HeadplastError(f"cannot join the Ray cluster at --ray-address {cfg.ray_address}: {e}",
                                 "start it (`ray start --head` on the head node), check the address, or leave "
                                 "--ray-address out to start a local Ray") from e
    else:
        cpus, gpus = hardware()  # the numbers resolve() read, so the defaults fit what Ray gets
        ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, runtime_env=env, log_to_driver=False,
                 object_store_memory=200 * 2**20)  # results never pass through it
    _started = True


def resolve(cfg):
    """The GPUs and CPUs per job left out (None), from the hardware Ray has: once, before the sweep
    is recorded. A joined or running Ray is asked for its resources; a local one is not started
    for this, as it will get exactly this machine's CPUs and GPUs."""
    ray = _ray()
    if cfg.ray_address or ray.is_initialized():
        _start(ray, cfg)
        res = ray.cluster_resources()
        cpus, gpus = res.get("CPU", 0), res.get("GPU", 0)
        where = f"the Ray cluster at {cfg.ray_address}" if cfg.ray_address else "the running Ray"
    else:
        (cpus, gpus), where = hardware(), "this machine"
    out = cfg.for_ray_cluster(cpus, gpus, where)
    if cfg.gpus_per_job is None or cfg.cpus_per_job is None:
        print(f"ray: {out.gpus_per_job:g} GPU and {out.cpus_per_job} CPUs per job (defaults for {where}: "
              f"{gpus:g} GPUs, {cpus:g} CPUs; --gpus-per-job / --cpus-per-job to change)", flush=True)
    return out


def close() -> None:
    """Shut down the Ray this process started or joined."""
    global _started
    if _started:
        _ray().shutdown()
        _started = False


def check(cfg) -> None:
    """Before any job: Ray is installed and the cluster to join answers."""
    _ray()
    if cfg.ray_address:
        _check_reachable(cfg.ray_address)


def _check_reachable(address: str) -> None:
    """Ray keeps retrying an address nobody listens on for minutes: try it first."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # 'auto' and the like: Ray itself answers quickly
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise HeadplastError(f"nothing answers at --ray-address {address} ({e.strerror or e})",
                             "start the cluster (`ray start --head` on the head node prints its address), check "
                             "host and port, or leave --ray-address out to start a local Ray") from None


def resources(cfg, job) -> dict:
    """The Ray options of one job: a run gets --gpus-per-job, a cross-run job (it reads the runs'
    results) none."""
    return {"name": job.name, "num_cpus": cfg.threads(), "num_gpus": cfg.gpus_per_job if job.train is not None else 0}


def run(cfg, todo, jobs) -> None:
    """Run the jobs; `cfg` went through resolve()."""
    ray = _ray()
    _start(ray, cfg)
    # with GPUs a worker process runs one job and exits (max_calls=1): CUDA keeps the GPUs it saw
    # when it started, so a reused process would carry one job's GPU into the next job
    task = ray.remote(max_calls=1 if cfg.gpus_per_job else 0, max_retries=cfg.max_retries,
                      retry_exceptions=False)(work)
    print(f"ray: {len(todo)} jobs, {cfg.threads()} CPU and {cfg.gpus_per_job:g} GPU each, on "
          f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs / {ray.cluster_resources().get('GPU', 0):.0f} GPUs",
          flush=True)

    def submit(j):
        opts = resources(cfg, j)
        return task.options(**opts).remote(j, jobs, "ray", cfg.threads(), gpus=opts["num_gpus"])

    _wait(ray, {submit(j): j for j in todo if j.train is not None})
    cross = [j for j in todo if j.train is None]
    ready = [j for j in cross if all(is_done(r, jobs) for r in runs_of(j, jobs))]
    for j in cross:
        if j not in ready:
            print(f"skipped {j.name}: some of its runs are not done (failed, or running elsewhere)", flush=True)
    _wait(ray, {submit(j): j for j in ready})


def _wait(ray, refs: dict) -> None:
    t = time.time()
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        job = refs.pop(done[0])
        try:
            r = ray.get(done[0])
            print(f"[{time.time() - t:6.0f}s] done    {job.name} ({r['seconds']} s)", flush=True)
        except Exception as e:  # noqa: BLE001 -- the job's state and log say what happened
            line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            print(f"[{time.time() - t:6.0f}s] failed  {job.name}: {line[:300]}", flush=True)
