"""The head sweep behind every per-head measurement on the replay engine (ablation importance,
update effect): written once, so a fix to it is made once.

Per length-sorted batch: one recorded pass (Replay); then this process's units (layer, block of
k heads, headplast.measure.shard) each run as k stacked copies of the batch under the caller's
hooks on O, replayed from layer l upwards. The caller's `score` turns logits into per-example
values; they fill arrays [N, 1 + L*H, ...]: column 0 the unmodified model, column 1 + l*H + h
head (l, h) changed. The arrays are gathered across processes and the losses checked finite.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from headplast.arch.adapters import ArchAdapter
from headplast.data.tokenize import Encoded, sorted_batches
from headplast.errors import HeadplastError
from headplast.measure.fastpath import FastPath
from headplast.measure.replay import Replay
from headplast.measure.shard import current, gather, mine, units

# per batch: (rp, example indices [B], labels [B]) -> (score, hooks);
#   score(logits [B, C]) -> per-example values, a tuple of [B, ...] tensors (the first: losses);
#   hooks(l, heads) -> a context manager changing copy j of k stacked copies at head heads[j] of layer l
PerBatch = Callable[[Replay, np.ndarray, torch.Tensor], tuple[Callable, Callable]]


def chunk_size(H: int, B: int, T: int, max_tokens: int) -> int:
    """Heads run together: as many copies of the batch [B, T] as fit in max_tokens (1 to H)."""
    return int(max(1, min(H, max_tokens // max(B * T, 1))))


def check_finite(losses: np.ndarray, what: str) -> None:
    if not np.isfinite(losses).all():
        raise HeadplastError(f"non-finite losses {what} (NaN/inf in the model's outputs)",
                             "check the checkpoints (was training stable?) or use --dtype float32")


def mean_se(diff: np.ndarray, L: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean [L, H] and paired standard error [L, H] over examples of per-example differences [N, L*H]."""
    N = diff.shape[0]
    se = diff.std(0, ddof=1) / np.sqrt(N) if N > 1 else np.full(L * H, np.nan)
    return diff.mean(0).reshape(L, H), se.reshape(L, H)


@torch.no_grad()
def sweep(model, adapter: ArchAdapter, enc: Encoded, pad_id: int, batch_size: int, max_tokens: int,
          per_batch: PerBatch, fast: FastPath | None, desc: str, progress: bool, what: str,
          units_per_layer: int | None = None) -> list[np.ndarray]:
    """Per-example values of every head (see module docstring): one host array [N, 1 + L*H, ...]
    per value of `score`, in its dtype. fast: the family's fast path, or None to replay whole layers.
    units_per_layer: H by default; the K/V group count for a sweep over groups (H then reads as it)."""
    model.eval()
    adapter.check_pad(model, pad_id)
    device = next(model.parameters()).device
    L, N = adapter.num_layers(model.config), len(enc)
    H = units_per_layer or adapter.num_heads(model.config)
    shard = current()  # other processes compute other heads (headplast.measure.shard)
    owned = np.zeros((N, 1 + L * H), dtype=bool)  # the (example, column) entries this process computed
    host: list[np.ndarray] = []
    bar = tqdm(total=N * L * H // shard.world, desc=desc, unit="head-ex", disable=not progress)
    for idx, batch in sorted_batches(enc, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        B, T = batch["input_ids"].shape
        rp = Replay(model, adapter, batch)
        score, hooks = per_batch(rp, idx, labels)
        base = score(rp.logits)
        # the batch's values stay on the device and are copied to the host once per batch: no
        # synchronisation per head (the same values as copying each head's, bit for bit)
        bufs = [torch.zeros(B, 1 + L * H, *v.shape[1:], dtype=v.dtype, device=device) for v in base]  # [B, 1+L*H, ...]
        for buf, v in zip(bufs, base):
            buf[:, 0] = v
        owned[idx, 0] = shard.leader  # every process computes the unchanged pass; rank 0's is kept
        for l, heads in mine(units(L, H, chunk_size(H, B, T, max_tokens)), L, shard):
            k = len(heads)
            with hooks(l, heads):
                out = rp.run_from(l, rp.input_of(l, k), k) if fast is None else rp.from_o_input(fast, l, k)  # [k*B, C]
            for j, h in enumerate(heads):
                for buf, v in zip(bufs, score(out[j * B:(j + 1) * B])):
                    buf[:, 1 + l * H + h] = v
                owned[idx, 1 + l * H + h] = True
            bar.update(B * k)
        rows = [buf.cpu().numpy() for buf in bufs]
        host = host or [np.zeros((N, *r.shape[1:]), dtype=r.dtype) for r in rows]  # [N, 1+L*H, ...]
        for a, r in zip(host, rows):
            a[idx] = r
    bar.close()
    if not host:
        raise HeadplastError("no examples to measure", "use a larger --eval-size")
    host = gather(owned, host, [0] * len(host))
    check_finite(host[0], what)
    return host
