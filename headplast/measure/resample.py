"""Resample ablation: a head's output replaced by the same head's output on another eval example.

Example i takes its donor from a fixed derangement of the eval subset (no example is its own
donor), drawn with the eval subset's seed, so every run and every pass uses the same pairs.
Positions are aligned where the task head reads: from the left for encoders (position t gets the
donor's position t), from the right for decoders (the receiver's last real token gets the donor's
last, the one before it the donor's one before, ...); where the donor is shorter, the remaining
positions get the donor's mean over its own tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from headplast.arch.adapters import ArchAdapter
from headplast.data.subset import SUBSET_SEED
from headplast.data.tokenize import Encoded, collate
from headplast.errors import HeadplastError
from headplast.measure.gating import capture_o_inputs


def derangement(n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """A random permutation of range(n) without fixed points (donor of example i: out[i] != i)."""
    if n < 2:
        raise HeadplastError("the resample ablation needs at least 2 eval examples",
                             "use a larger --eval-size, or --ablation zero / mean")
    rng = np.random.default_rng(seed)
    while True:  # about e (2.7) draws on average
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def align(donor_ctx: torch.Tensor, donor_len: int, T: int, receiver_len: int | None = None) -> torch.Tensor:
    """[T_d, D] O input of one donor (its real tokens first) -> [T, D] on the receiver's positions.
    receiver_len (decoders): align the two last real tokens; the receiver's padding gets the mean."""
    real = donor_ctx[:donor_len]
    fill = real.mean(0, keepdim=True)
    if receiver_len is not None:  # right-aligned: receiver position t <- donor position t + shift
        shift = donor_len - receiver_len
        kept = real[max(shift, 0):]  # the donor's tokens that land on the receiver's
        front = fill.expand(max(-shift, 0), -1)  # receiver positions before the donor's first token
        return torch.cat([front, kept, fill.expand(T - receiver_len, -1)], 0)
    if donor_len >= T:
        return real[:T]
    return torch.cat([real, fill.expand(T - donor_len, -1)], 0)


@torch.no_grad()
def replacements(model, adapter: ArchAdapter, enc: Encoded, donors: np.ndarray, T: int, pad_id: int,
                 receivers: np.ndarray | None = None) -> dict:
    """{layer: [B, T, H*d]}: the O inputs of `donors` (indices into enc, one per receiver row, in the
    receivers' order) on the receivers' T positions. One forward pass over the donors. receivers
    (their indices into enc): needed by decoders, aligned at each receiver's last token."""
    rl = receiver_lengths(adapter, enc, receivers, len(donors))
    device = next(model.parameters()).device
    batch = collate([enc.features[i] for i in donors], pad_id)
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    lengths = batch["attention_mask"].sum(1).tolist()
    with capture_o_inputs(model, adapter) as store:
        model(**batch)
    return {l: torch.stack([align(ctx[b], int(lengths[b]), T, rl[b]) for b in range(len(donors))])
            for l, ctx in store.items()}


def receiver_lengths(adapter: ArchAdapter, enc: Encoded, receivers, n: int) -> list:
    """Each receiver's length where the alignment needs it (decoders), else None per row."""
    if not adapter.reads_last:
        return [None] * n
    if receivers is None:
        raise ValueError("decoders' resample ablation aligns at each receiver's last token: pass receivers")
    return [len(enc.features[int(i)]["input_ids"]) for i in receivers]
