"""Resample ablation: a head's output replaced by the same head's output on another eval example.

Example i takes its donor from a fixed derangement of the eval subset (no example is its own
donor), drawn with the eval subset's seed, so every run and every pass uses the same pairs.
Positions are aligned: position t gets the donor's position t; where the donor is shorter,
the remaining positions get the donor's mean over its own tokens.
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


def align(donor_ctx: torch.Tensor, donor_len: int, T: int) -> torch.Tensor:
    """[T_d, D] O input of one donor (its real tokens first) -> [T, D] on the receiver's positions."""
    real = donor_ctx[:donor_len]
    if donor_len >= T:
        return real[:T]
    fill = real.mean(0, keepdim=True).expand(T - donor_len, -1)
    return torch.cat([real, fill], 0)


@torch.no_grad()
def replacements(model, adapter: ArchAdapter, enc: Encoded, donors: np.ndarray, T: int, pad_id: int) -> dict:
    """{layer: [B, T, H*d]}: the O inputs of `donors` (indices into enc, one per receiver row, in the
    receivers' order) on the receivers' T positions. One forward pass over the donors."""
    device = next(model.parameters()).device
    batch = collate([enc.features[i] for i in donors], pad_id)
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    lengths = batch["attention_mask"].sum(1).tolist()
    with capture_o_inputs(model, adapter) as store:
        model(**batch)
    return {l: torch.stack([align(ctx[b], int(lengths[b]), T) for b in range(len(donors))])
            for l, ctx in store.items()}
