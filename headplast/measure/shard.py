"""One run's ablations and update effects split across processes (torchrun, accelerate launch).

The work of a batch is a list of units, (layer, block of its heads): exactly the blocks that
one process batches together. Each process computes whole units, so every number is computed
by the same operations on the same inputs as in one process; the per-example arrays are then
gathered and every process holds the full result (rank 0 writes it). Units are dealt out by
their cost, proportional to the layers replayed above the unit's layer times its heads.

A failure on one rank stops every rank: the ranks only ever meet in one kind of collective
(`_exchange`, an all_gather of (error, payload)), so a rank that fails contributes its error to
the collective the others wait in, whichever it is, and they all raise (`fail`, `reporting`),
instead of waiting for a collective it will never join (the process group's timeout is a day).

    torchrun --nproc-per-node 2 -m headplast measure RUN_DIR     # 2 CPU processes (gloo)
    torchrun --nproc-per-node 4 -m headplast measure RUN_DIR     # 4 GPUs (nccl), one each
    accelerate launch --multi_gpu --num_processes 2 -m headplast measure RUN_DIR   # the same, by accelerate
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from headplast.errors import HeadplastError

Unit = tuple[int, list[int]]  # (layer, heads)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


def current() -> Shard:
    """This process's place in the initialised process group (one process: Shard(0, 1))."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


@contextmanager
def launched(timeout_hours: float = 24.0, device: str | None = None):
    """Join the process group when started by torchrun / accelerate launch (WORLD_SIZE > 1): gloo
    on CPU (also on a GPU machine asked for --device cpu), nccl with one GPU per process. Yields the
    Shard. The timeout is long because ranks wait while rank 0 alone computes the measurements that
    are not split."""
    import torch.distributed as dist

    from headplast.arch.device import launched_rank_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield current()
        return
    gpu = None if str(device or "").startswith("cpu") else launched_rank_device()
    cuda = gpu is not None
    if cuda:
        torch.cuda.set_device(gpu)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=timeout_hours))
    _link["broken"] = False
    try:
        with reporting():
            yield current()
            # every rank done with every collective before any tears down: a rank that exits while
            # gloo still talks to it can abort ("terminate called without an active exception");
            # carries the status too: a rank that failed after its last collective is heard here
            _exchange(None)
    finally:
        dist.destroy_process_group()


_link = {"broken": False}  # an error was exchanged: no further collective (the others are leaving)


class RankFailed(HeadplastError):
    """Another rank failed; this one stops too. The CLI then exits without the interpreter's teardown
    (`hard_exit`): gloo's threads, whose peer is gone, can abort it there ("terminate called without
    an active exception", exit -6 instead of the error's 2; seen once in CI under load)."""

    hard_exit = True


def _exchange(payload, error: str | None = None) -> list:
    """Every rank's payload, rank by rank: the one collective the ranks meet in. Raises RankFailed
    when another rank sent an error instead of its payload."""
    import torch.distributed as dist

    shard = current()
    if _link["broken"]:
        raise RankFailed("a rank failed earlier in this launch", "see the first error above")
    parts: list = [None] * shard.world
    dist.all_gather_object(parts, (error, payload))
    failed = [(r, e) for r, (e, _) in enumerate(parts) if e is not None]
    if failed:
        _link["broken"] = True
        if error is None:
            r, e = failed[0]
            raise RankFailed(f"rank {r} of {shard.world} failed, so rank {shard.rank} stopped too: {e}",
                             f"see rank {r}'s error and traceback in its output; fix that and re-run (finished "
                             "measurements are kept)")
    return [p for _, p in parts]


def fail(exc: BaseException) -> None:
    """This rank failed: its error goes to the others in whichever collective they wait in (once;
    nothing when the error came from another rank or there is no other)."""
    if current().world <= 1 or _link["broken"] or isinstance(exc, RankFailed):
        return
    try:
        _exchange(None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))
    except Exception:  # the group itself is gone: torchrun stops the others
        pass
    _link["broken"] = True


@contextmanager
def reporting():
    """A failure inside the block is sent to the other ranks (`fail`), then raised here."""
    try:
        yield
    except Exception as e:
        fail(e)
        raise


def units(L: int, H: int, k_max: int) -> list[Unit]:
    """The blocks of heads one process runs together, in its order."""
    return [(l, list(range(h0, min(H, h0 + k_max)))) for l in range(L) for h0 in range(0, H, k_max)]


def owners(work: list[Unit], L: int, world: int) -> list[int]:
    """The rank computing each unit: largest cost first to the least loaded rank (deterministic)."""
    load, owner = [0.0] * world, [0] * len(work)
    for i in sorted(range(len(work)), key=lambda i: (-(L - work[i][0]) * len(work[i][1]), i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i], load[r] = r, load[r] + (L - work[i][0]) * len(work[i][1])
    return owner


def mine(work: list[Unit], L: int, shard: Shard) -> list[Unit]:
    if shard.world == 1:
        return work
    return [u for u, r in zip(work, owners(work, L, shard.world)) if r == shard.rank]


def gather(owned: np.ndarray, arrays: list[np.ndarray], column_offsets: list[int]) -> list[np.ndarray]:
    """Every rank's computed entries in one array each. owned [N, C] marks the (example, column)
    entries this rank computed; arrays[i] has columns owned[:, offset_i:] (its further dims kept)."""
    if current().world == 1:
        return arrays
    parts = _exchange((owned, arrays))
    out = [np.zeros_like(a) for a in arrays]
    for own, arrs in parts:
        for o, a, off in zip(out, arrs, column_offsets):
            sel = own[:, off:]
            o[sel] = a[sel]
    return out


def announce(name: str | None) -> str | None:
    """Rank 0 tells the others which split measurement comes next (None: no more)."""
    return _exchange(name if current().leader else None)[0]
