"""Sharded measurement: heads split across processes give exactly what one process gives."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headplast.measure.shard import Shard, mine, owners, units
from tiny import tiny_run_kwargs

TESTS = Path(__file__).parent


@pytest.mark.parametrize("L,H,k_max,world", [(2, 4, 1, 2), (6, 12, 12, 2), (6, 12, 5, 3), (12, 12, 4, 4), (2, 4, 4, 4)])
def test_units_cover_every_head_once_and_are_dealt_by_cost(L, H, k_max, world):
    work = units(L, H, k_max)
    assert sorted((l, h) for l, hs in work for h in hs) == [(l, h) for l in range(L) for h in range(H)]
    assert all(len(hs) <= k_max for _, hs in work)
    own = owners(work, L, world)
    assert own == owners(work, L, world)  # same on every rank
    split = [mine(work, L, Shard(r, world)) for r in range(world)]
    assert sorted(u for s in split for u in s) == sorted(work)
    cost = [sum((L - l) * len(hs) for l, hs in s) for s in split]
    biggest = max((L - l) * len(hs) for l, hs in work)
    assert max(cost) - min(cost) <= biggest  # greedy: within one unit of balanced
    if len(work) >= world:
        assert all(s for s in split)


ABORT = "terminate called without an active exception"


LAUNCHERS = {"torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
             # accelerate's multi-process launcher (it runs torch.distributed.run; gloo on a CPU)
             "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]}


def _launch(args: list[str], launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """Two processes under torchrun or accelerate launch. Once in CI one process aborted with ABORT
    (a C++ thread left joinable, not reproduced in 20 local launches, also under load); such a
    launch is tried once more, any other failure is not, and what is asserted of the results is
    unchanged."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    cmd = [sys.executable, *LAUNCHERS[launcher], *args]
    for attempt in range(2):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode == 0 or ABORT not in p.stderr:
            break
    assert p.returncode == 0, p.stderr[-4000:]
    return p


@pytest.mark.slow
@pytest.mark.launch
def test_split_across_two_gloo_processes_equals_one_process(tmp_path):
    """Importance (zero, mean) and update effect of every architecture, 2 processes vs 1, bit for bit
    (one thread per process in both: torchrun's default)."""
    from shard_cases import cases

    _launch([str(TESTS / "shard_worker.py"), str(tmp_path)])
    split = np.load(tmp_path / "split.npz")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, compute in cases(tmp_path / "tok1"):
            for i, a in enumerate(compute()):
                assert np.array_equal(split[f"{name}/{i}"], a, equal_nan=True), f"{name}: array {i} differs"
    finally:
        torch.set_num_threads(threads)
    from tiny import ALL_ARCHS
    # 13 architectures x (5 + 5 + 6) arrays, and 4 group-importance arrays for each grouped-query family
    assert len(split.files) == len(ALL_ARCHS) * 16 + 4 * 4 == 13 * 16 + 16


@pytest.mark.slow
@pytest.mark.launch
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launched_measure_writes_what_one_process_writes(launcher, tmp_path, model_dirs):
    """`torchrun --nproc-per-node 2 -m headplast measure RUN` and `accelerate launch --multi_gpu
    --num_processes 2 -m headplast measure RUN` (gloo, CPU) vs `headplast measure RUN`."""
    from headplast.steps.train_step import run_train
    from headplast.train.config import TrainConfig

    run = run_train(TrainConfig(method="fft", **tiny_run_kwargs(model_dirs["bert"], tmp_path / "one"))).path
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    run2 = tmp_path / "two" / run.relative_to(tmp_path / "one")
    flags = ["--measure-batch-size", "4", "--max-tokens", "200", "--ablation", "zero,mean", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "headplast", "measure", str(run), *flags], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    two = _launch(["-m", "headplast", "measure", str(run2), *flags], launcher)
    assert "(2 processes)" in two.stdout and two.stdout.count("measured") == 1  # rank 0 alone reports
    written = sorted(p.name for p in run.iterdir() if p.suffix in (".jsonl", ".npy"))
    assert {"importance_pre.jsonl", "importance_post_mean.jsonl", "update_effect.jsonl", "losses_post.npy",
            "losses_effect_rev.npy"} <= set(written)
    for name in written:
        assert (run / name).read_bytes() == (run2 / name).read_bytes(), f"{name} differs"
    meta = json.loads((run2 / "measure_meta.json").read_text())
    assert "update_effect" in meta["measurements"]
    # a second launch finds everything fresh: no process computes anything
    again = _launch(["-m", "headplast", "measure", str(run2), *flags], launcher)
    line = next(x for x in again.stdout.splitlines() if x.startswith("measured"))
    assert "skipped" in line and not re.search(r"\d+(\.\d+)?s\b", line), line


@pytest.fixture(scope="module")
def trained_bert(model_dirs, tmp_path_factory):
    from headplast.steps.train_step import run_train
    from headplast.train.config import TrainConfig

    root = tmp_path_factory.mktemp("fail")
    return root, run_train(TrainConfig(method="fft", **tiny_run_kwargs(model_dirs["bert"], root / "runs"))).path


@pytest.mark.slow
@pytest.mark.launch
@pytest.mark.parametrize("rank,where", [(0, "ablation"), (1, "ablation"), (0, "gradfisher")])
def test_a_rank_that_fails_stops_every_rank_with_its_error(rank, where, trained_bert, tmp_path):
    """`headplast measure` in 2 gloo processes (no torchrun: it would stop the survivor itself), one
    failing: in a split measurement while the other waits for its share (rank 0 or 1), or in one
    rank 0 computes alone while rank 1 waits for the next. Both exit soon, each with an error."""
    import socket
    import time

    root, run = trained_bert
    copy = tmp_path / run.relative_to(root)
    shutil.copytree(root / "runs", tmp_path / "runs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    procs = [subprocess.Popen([sys.executable, str(TESTS / "shard_fail_worker.py"), str(copy), str(rank), where],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    start, ended = time.monotonic(), {}
    try:
        while len(ended) < 2:
            for r, p in enumerate(procs):
                if r not in ended and p.poll() is not None:
                    ended[r] = time.monotonic()
            first = min(ended.values(), default=None)
            if (first is not None and time.monotonic() - first > 60) or time.monotonic() - start > 600:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out = [p.communicate()[1] for p in procs]
    assert len(ended) == 2, f"rank {1 - min(ended, default=0)} still running a minute after the other ended:\n" \
                            + "\n".join(o[-2000:] for o in out)
    injected = f"injected failure in {where} on rank {rank}"
    assert procs[rank].returncode not in (0, None) and injected in out[rank], out[rank][-3000:]
    other = 1 - rank
    assert procs[other].returncode == 2, out[other][-3000:]  # headplast's error exit, not a kill
    assert f"headplast: error: rank {rank} of 2 failed, so rank {other} stopped too: RuntimeError: {injected}" \
        in out[other], out[other][-3000:]
