"""Run by tests/test_shard.py: one process of `headplast measure RUN` in a 2-process group started by
hand (RANK, WORLD_SIZE, MASTER_ADDR/PORT set by the test), the process of rank FAIL_RANK failing in
module FAIL_IN (head_gates replaced by a function that raises: a failure injected by the test alone)."""

import importlib
import os
import sys

import torch


def main(run: str, fail_rank: str, fail_in: str) -> int:
    torch.set_num_threads(1)
    if os.environ["RANK"] == fail_rank:
        def broken(*args, **kwargs):
            raise RuntimeError(f"injected failure in {fail_in} on rank {fail_rank}")
        importlib.import_module(f"headplast.measure.{fail_in}").head_gates = broken
    from headplast.cli.main import main as cli

    return cli(["measure", run, "--no-progress", "--measure-batch-size", "4", "--max-tokens", "200"])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
