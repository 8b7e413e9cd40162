"""The naive references: one full forward pass per head (the original guide's way).

naive_importance gates heads with the engine's own hook on O; weight_edit_importance uses no
hook at all (a head removed by editing a copy's weights), so it does not share the engine's
assumption that slice h of O's input is head h. Used by the tests (correctness of the fast
engine) and the benchmark (its speed).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from headplast.data.tokenize import collate, padded_batches, sorted_batches
from headplast.measure.ablation import example_losses, head_means, kl_base_to, summarize
from headplast.measure.gating import capture_o_inputs, head_gates
from headplast.measure.headloop import check_finite
from headplast.measure.resample import align, derangement, receiver_lengths
from headplast.measure.results import ImportanceResult


def _one_pass_per_head(model, adapter, enc, task, batches, removed, ablation, progress=False) -> ImportanceResult:
    """What both references share (called under no_grad): the unchanged model's pass, then for
    every head one full pass of every batch through `removed(l, h)`, a function (batch number,
    batch) -> logits [B, C] of the model without head h of layer l; per-example losses, logits and
    KL, summarised."""
    model.eval()
    device = next(model.parameters()).device
    L, H = adapter.num_layers(model.config), adapter.num_heads(model.config)
    N, C = len(enc), task.num_labels
    losses = np.zeros((N, 1 + L * H))
    logits_all = np.zeros((N, 1 + L * H, C), dtype=np.float32)
    kl = np.zeros((N, L * H))
    batches = [(idx, {k: v.to(device) for k, v in b.items()}) for idx, b in batches]
    labels = [b.pop("labels") for _, b in batches]
    base = [model(**b).logits for _, b in batches]  # [B, C] per batch
    for (idx, _), y, lg in zip(batches, labels, base):
        losses[idx, 0] = example_losses(lg, y, task.is_regression).cpu().numpy()
        logits_all[idx, 0] = lg.cpu().numpy()
    for l in tqdm(range(L), desc="naive ablation", disable=not progress):
        for h in range(H):
            run, c = removed(l, h), 1 + l * H + h
            for b, ((idx, batch), y, b0) in enumerate(zip(batches, labels, base)):
                lg = run(b, batch)
                losses[idx, c] = example_losses(lg, y, task.is_regression).cpu().numpy()
                logits_all[idx, c] = lg.cpu().numpy()
                if not task.is_regression:
                    kl[idx, c - 1] = kl_base_to(b0, lg).cpu().numpy()
    check_finite(losses, "during ablation")
    return summarize(losses, logits_all, kl, enc.labels, task, ablation, L, H)


@torch.no_grad()
def naive_importance(model, adapter, enc, task, pad_id, batch_size=128, pad_to=None, ablation="zero",
                     progress=False):
    """pad_to=None pads each batch to its longest example; an int pads every batch to it."""
    model.eval()
    device = next(model.parameters()).device
    H = adapter.num_heads(model.config)
    means = head_means(model, adapter, enc, pad_id) if ablation == "mean" else None
    batches = list(padded_batches(enc, batch_size, pad_id, pad_to) if pad_to
                   else sorted_batches(enc, batch_size, pad_id))
    if ablation == "resample":  # per batch {layer: [B, T, H*d]}, each donor run on its own
        donors = derangement(len(enc))
        means = [_donor_outputs(model, adapter, enc, donors[idx], batch["input_ids"].shape[1], pad_id, idx)
                 for idx, batch in batches]

    def gated(l, h):  # the engine's own gate hook on O
        gate = torch.ones(H, device=device)
        gate[h] = 0

        def run(b, batch):
            with head_gates(model, adapter, {l: gate}, means[b] if ablation == "resample" else means):
                return model(**batch).logits
        return run

    return _one_pass_per_head(model, adapter, enc, task, batches, gated, ablation, progress)


def _donor_outputs(model, adapter, enc, donors, T: int, pad_id: int, receivers) -> dict:
    """{layer: [B, T, H*d]}: each donor's O inputs from a forward pass of that example alone."""
    rows = []
    rl = receiver_lengths(adapter, enc, receivers, len(donors))
    for b, j in enumerate(donors):
        batch = collate([enc.features[j]], pad_id)
        batch.pop("labels", None)
        with capture_o_inputs(model, adapter) as store:
            model(**{k: v.to(next(model.parameters()).device) for k, v in batch.items()})
        rows.append({l: align(ctx[0], len(enc.features[j]["input_ids"]), T, rl[b]) for l, ctx in store.items()})
    return {l: torch.stack([r[l] for r in rows]) for l in rows[0]}


EDITS = ("o_columns", "v_rows")


def remove_head(model, adapter, l: int, h: int, edit: str, mean: torch.Tensor | None = None) -> None:
    """Head h of layer l removed from `model` in place by a weight edit, no hook.

    o_columns: W_O[:, slice h] = 0, so O reads nothing of head h. v_rows: W_V[slice h] and
    b_V[slice h] = 0, so head h's values, hence its context (attention weights times 0), are 0:
    this ties slice h of O's input to head h's own value projection. mean [d] (mean ablation):
    O's bias += W_O[:, slice h] @ mean, what O adds for a head whose context is its mean."""
    s = adapter.head_slice(model.config, h)
    o, wo = adapter.linear(model, l, "o"), adapter.weight(model, l, "o")  # wo: [out, in], a view
    if mean is not None:  # before the columns are zeroed; the engine's gate casts the mean the same way
        shift = wo[:, s] @ mean.to(wo.dtype)  # [D]
        if o.bias is None:  # Llama-like O has no bias: give it one
            o.bias = torch.nn.Parameter(shift)
        else:
            o.bias += shift
    if edit == "o_columns":
        wo[:, s] = 0
    elif edit == "v_rows":
        if adapter.group_size(model.config) > 1:
            raise ValueError("v_rows under grouped-query attention would remove the whole K/V group: "
                             "expand the K/V heads first (one copy per query head, the same function)")
        adapter.weight(model, l, "v")[s] = 0
        if (bv := adapter.bias(model, l, "v")) is not None:
            bv[s] = 0
    else:
        raise ValueError(f"edit {edit!r}: one of {EDITS}")


@torch.no_grad()
def weight_edit_importance(model, adapter, enc, task, pad_id, batch_size=128, ablation="zero",
                           edit="o_columns") -> ImportanceResult:
    """Importance with every head removed by `remove_head` on a deep copy of the model, one full
    forward pass per head. zero and mean ablation only: resample replaces a head's output by one
    that varies by example and position, which no bias (or other weight) edit reproduces."""
    if ablation not in ("zero", "mean"):
        raise ValueError(f"ablation {ablation!r}: a weight edit is exact for zero and mean ablation only")
    model.eval()
    means = head_means(model, adapter, enc, pad_id, batch_size) if ablation == "mean" else None  # [L, H*d]

    def edited(l, h):  # no hook: a copy of the model with the head's weights edited
        m = copy.deepcopy(model)
        s = adapter.head_slice(model.config, h)
        remove_head(m, adapter, l, h, edit, None if means is None else means[l, s])
        return lambda b, batch: m(**batch).logits

    return _one_pass_per_head(model, adapter, enc, task, sorted_batches(enc, batch_size, pad_id), edited, ablation)
