"""Run by tests/test_shard.py under `torchrun --nproc-per-node 2`: the split ablation importance
(zero and mean) and update effect of a tiny model of every architecture; rank 0 saves them."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from shard_cases import cases  # noqa: E402

from headplast.measure.shard import launched  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    with launched() as shard:
        assert shard.world == 2, shard
        results = {name: compute() for name, compute in cases(Path(out) / f"tok{shard.rank}")}  # no shared writes
    if shard.leader:
        np.savez(Path(out) / "split.npz", **{k: v for name, arrays in results.items()
                                             for k, v in ((f"{name}/{i}", a) for i, a in enumerate(arrays))})


if __name__ == "__main__":
    main(sys.argv[1])
