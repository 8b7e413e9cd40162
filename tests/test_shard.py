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
    assert len(split.files) == 8 * 16  # 8 architectures x (5 + 5 + 6) arrays


@pytest.mark.slow
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
