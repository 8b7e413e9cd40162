"""The naive reference: one full forward pass per head (the original guide's way).

Used by the tests (correctness of the fast engine) and the benchmark (its speed).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from headplast.data.tokenize import collate, padded_batches, sorted_batches
from headplast.measure.ablation import example_losses, head_means, kl_base_to, summarize
from headplast.measure.gating import capture_o_inputs, head_gates
from headplast.measure.resample import align, derangement


@torch.no_grad()
def naive_importance(model, adapter, enc, task, pad_id, batch_size=128, pad_to=None, ablation="zero",
                     progress=False):
    """pad_to=None pads each batch to its longest example; an int pads every batch to it."""
    model.eval()
    device = next(model.parameters()).device
    L, H = adapter.num_layers(model.config), adapter.num_heads(model.config)
    means = head_means(model, adapter, enc, pad_id) if ablation == "mean" else None
    N, C = len(enc), task.num_labels
    losses = np.zeros((N, 1 + L * H))
    logits_all = np.zeros((N, 1 + L * H, C), dtype=np.float32)
    kl = np.zeros((N, L * H))
    batches = list(padded_batches(enc, batch_size, pad_id, pad_to) if pad_to
                   else sorted_batches(enc, batch_size, pad_id))
    if ablation == "resample":  # per batch {layer: [B, T, H*d]}, each donor run on its own
        donors = derangement(len(enc))
        means = [_donor_outputs(model, adapter, enc, donors[idx], batch["input_ids"].shape[1], pad_id)
                 for idx, batch in batches]
    base = {}
    for b, (idx, batch) in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        base[b] = model(**batch).logits
        losses[idx, 0] = example_losses(base[b], labels, task.is_regression).cpu().numpy()
        logits_all[idx, 0] = base[b].cpu().numpy()
    for l in tqdm(range(L), desc="naive ablation", disable=not progress):
        for h in range(H):
            gate = torch.ones(H, device=device)
            gate[h] = 0
            for b, (idx, batch) in enumerate(batches):
                batch = {k: v.to(device) for k, v in batch.items()}
                labels = batch.pop("labels")
                with head_gates(model, adapter, {l: gate}, means[b] if ablation == "resample" else means):
                    lg = model(**batch).logits
                c = 1 + l * H + h
                losses[idx, c] = example_losses(lg, labels, task.is_regression).cpu().numpy()
                logits_all[idx, c] = lg.cpu().numpy()
                if not task.is_regression:
                    kl[idx, c - 1] = kl_base_to(base[b], lg).cpu().numpy()
    return summarize(losses, logits_all, kl, enc.labels, task, ablation, L, H)


def _donor_outputs(model, adapter, enc, donors, T: int, pad_id: int) -> dict:
    """{layer: [B, T, H*d]}: each donor's O inputs from a forward pass of that example alone."""
    rows = []
    for j in donors:
        batch = collate([enc.features[j]], pad_id)
        batch.pop("labels", None)
        with capture_o_inputs(model, adapter) as store:
            model(**{k: v.to(next(model.parameters()).device) for k, v in batch.items()})
        rows.append({l: align(ctx[0], len(enc.features[j]["input_ids"]), T) for l, ctx in store.items()})
    return {l: torch.stack([r[l] for r in rows]) for l in rows[0]}
