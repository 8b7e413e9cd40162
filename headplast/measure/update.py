"""Update magnitude per head: theta1 - theta0 on each head's rows of Q/K/V and columns of O.

For LoRA (and any peft method that merges) theta1's weights are the merged weights,
computed in fp32 from theta0 + the adapter.
"""

from __future__ import annotations

import numpy as np
import torch

from headplast.arch.adapters import KINDS, ArchAdapter, get_adapter
from headplast.arch.loading import load_model
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.results import UpdateResult
from headplast.store import schema


def qkvo_weights(model, adapter: ArchAdapter) -> dict:
    """{(layer, kind): fp32 weight} for Q, K, V, O of every layer (biases excluded)."""
    L = adapter.num_layers(model.config)
    return {(l, k): adapter.weight(model, l, k).detach().float().cpu().clone() for l in range(L) for k in KINDS}


def update_magnitude(w0: dict, w1: dict, adapter: ArchAdapter, config) -> UpdateResult:
    L = adapter.num_layers(config)

    def per_head(w, k):  # [H] squared norms of the heads' slices (K/V under GQA: a 1/G share of the group's)
        return adapter.head_sq(w.double(), config, k).numpy()

    parts = {k: np.stack([per_head(w1[(l, k)] - w0[(l, k)], k) for l in range(L)]) for k in KINDS}
    base = sum(np.stack([per_head(w0[(l, k)], k) for l in range(L)]) for k in KINDS)
    U, W0 = np.sqrt(sum(parts.values())), np.sqrt(base)
    with np.errstate(divide="ignore", invalid="ignore"):
        Urel = U / W0
    return UpdateResult(U, Urel, *(np.sqrt(parts[k]) for k in KINDS), W0)


@torch.no_grad()
def merged_peft_model(theta0_dir: str, adapter_dir: str):
    """theta0 + adapter, merged in fp32 (works for every peft method that can merge)."""
    from peft import PeftModel

    base = load_model(theta0_dir).float()
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.eval()
    return merged


def _compute(x: Inputs) -> UpdateResult:
    m0, m1 = x.model("theta0", exact=True), x.model("theta1", exact=True)
    ad = get_adapter(m0)
    return update_magnitude(qkvo_weights(m0, ad), qkvo_weights(m1, ad), ad, m0.config)


UPDATE = Measurement.of(schema.UPDATE, UpdateResult, _compute)
