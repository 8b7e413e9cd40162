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


def _start(ray, cfg) -> bool:
    """Join --ray-address, or start a local Ray sized to this machine. True if we started it."""
    if ray.is_initialized():
        return False
    env = {"env_vars": {"TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"), "TOKENIZERS_PARALLELISM": "false"}}
    if cfg.ray_address:
        try:
            ray.init(address=cfg.ray_address, runtime_env=env, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise HeadplastError(f"cannot join the Ray cluster at --ray-address {cfg.ray_address}: {e}",
                                 "start it (`ray start --head` on the head node), check the address, or leave "
                                 "--ray-address out to start a local Ray") from e
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=env, log_to_driver=False,
                 object_store_memory=200 * 2**20)  # results never pass through it
    return True


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


def run(cfg, todo, jobs) -> None:
    ray = _ray()
    started = _start(ray, cfg)
    task = ray.remote(num_cpus=cfg.threads() or 1, num_gpus=cfg.gpus_per_job, max_retries=cfg.max_retries,
                      retry_exceptions=False)(work)
    print(f"ray: {len(todo)} jobs, {cfg.threads() or 1} CPU and {cfg.gpus_per_job} GPU each, on "
          f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs / {ray.cluster_resources().get('GPU', 0):.0f} GPUs",
          flush=True)
    try:
        _wait(ray, {task.options(name=j.name).remote(j, jobs, "ray", cfg.threads()): j
                    for j in todo if j.train is not None})
        cross = [j for j in todo if j.train is None]
        ready = [j for j in cross if all(is_done(r, jobs) for r in runs_of(j, jobs))]
        for j in cross:
            if j not in ready:
                print(f"skipped {j.name}: some of its runs are not done (failed, or running elsewhere)", flush=True)
        _wait(ray, {task.options(name=j.name, num_gpus=0).remote(j, jobs, "ray", cfg.threads()): j for j in ready})
    finally:
        if started:
            ray.shutdown()


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
