"""Update effect per head: how much of fine-tuning's gain each head's own update carries.

  effect_fwd(l,h) = mean_x [loss_x(theta0) - loss_x(theta0 with head h's Q/K/V rows and O columns from theta1)]
  effect_rev(l,h) = mean_x [loss_x(theta1 with head h's Q/K/V rows and O columns from theta0) - loss_x(theta1)]

Under grouped-query attention head h's K/V rows are its group's, shared with the group's other
heads: patching "head h" computes h with the other model's Q rows, group K/V rows and O columns
while the other heads keep their own K/V (what patching h's rows gives in the same model with the
K/V heads copied once per query head). "Q/K/V rows" include their biases; everything that is not per head (O's bias, LayerNorms, FFN,
embeddings, task head) keeps the model's own values. LoRA's theta1 is the merged model.

Exact and fast, on the ablation engine (headplast.measure.replay): heads do not mix before O,
so one pass of layer l with *every* head's Q/K/V taken from the other model gives each head's
patched context at once (slice h is what patching head h alone gives). Head h patched is then
"O input slice h replaced by that context, plus (W_O_other - W_O)[:, h] times it added to O's
output", which hooks on O apply to k stacked copies, replayed from O of layer l upwards (the loop
over batches and heads: headplast.measure.headloop, shared with ablation importance).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.data.tokenize import Encoded
from headplast.measure.ablation import example_losses
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.fastpath import FAST_PATHS
from headplast.measure.gating import capture_o_inputs
from headplast.measure.headloop import mean_se, sweep
from headplast.measure.replay import Replay
from headplast.measure.results import GroupEffectResult, UpdateEffectResult
from headplast.store import schema


@contextmanager
def _qkv_from(model, other, adapter: ArchAdapter, l: int):
    """Every head's Q/K/V (weights and biases) of layer l taken from `other`."""
    mods = list({id(m): (m, o) for m, o in ((adapter.linear(model, l, k), adapter.linear(other, l, k))
                                            for k in ("q", "k", "v"))}.values())  # GPT-2: one module
    saved = [(m.weight.data.clone(), None if m.bias is None else m.bias.data.clone()) for m, _ in mods]
    try:
        for m, o in mods:
            m.weight.data.copy_(o.weight.data)
            if m.bias is not None:
                m.bias.data.copy_(o.bias.data)
        yield
    finally:
        for (m, _), (w, b) in zip(mods, saved):
            m.weight.data.copy_(w)
            if b is not None:
                m.bias.data.copy_(b)


def _patched_context(rp: Replay, other, l: int) -> torch.Tensor:
    """Input of O [B, T, H*d] of layer l with every head's Q/K/V from `other` (layer input unchanged)."""
    with _qkv_from(rp.model, other, rp.adapter, l), capture_o_inputs(rp.model, rp.adapter) as store:
        rp.layer(l, rp.input_of(l, 1), 1)
    return store[l]


@contextmanager
def _patch_hooks(o_module, ctx1: torch.Tensor, d_o: torch.Tensor, heads: list[int], d: int, rows):
    """Copy j of the k stacked copies gets head heads[j] patched: its slice of O's input replaced
    by ctx1's, and d_o[:, slice] @ that slice added to O's output (one tensor op for all copies).
    rows(ctx1, T'): ctx1 on the T' positions O sees (Replay.o_rows)."""
    B, k, h0 = ctx1.shape[0], len(heads), heads[0]
    H = ctx1.shape[-1] // d
    if heads != list(range(h0, h0 + k)):
        raise ValueError(f"heads {heads}: a block of consecutive heads (headplast.measure.shard.units)")
    # slices, not index lists: an index list is copied to the device, a wait for the GPU per block
    select = torch.zeros(k, 1, 1, H, 1, dtype=ctx1.dtype, device=ctx1.device)  # [k, 1, 1, H, 1]
    select[:, 0, 0, h0:h0 + k, 0] = torch.eye(k, dtype=ctx1.dtype, device=ctx1.device)
    d_sel = d_o.view(d_o.shape[0], H, d)[:, h0:h0 + k].contiguous()  # [D_out, k, d]

    def pre(module, args):
        x = args[0]  # [k*B, T', H*d]; T' = 1 where the engine needs the read token only
        T = x.shape[1]
        xh = x.view(k, B, T, H, d)
        c = rows(ctx1, T).view(1, B, T, H, d)
        return ((xh + select * (c - xh)).view(k * B, T, H * d), *args[1:])

    def post(module, args, out):
        T = out.shape[1]
        c = rows(ctx1, T).view(B, T, H, d)[:, :, h0:h0 + k].contiguous()  # [B, T', k, d]
        return out + torch.einsum("btkd,okd->kbto", c, d_sel).reshape(k * B, T, -1)
    with o_hooks(o_module, pre, post):
        yield


@contextmanager
def o_hooks(o_module, pre, post):
    """A forward pre-hook and a forward hook on O for the duration of the block."""
    handles = [o_module.register_forward_pre_hook(pre), o_module.register_forward_hook(post)]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


def patch_losses(model, other, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                 max_tokens: int = 1 << 14, progress: bool = True, desc: str = "update effect",
                 groups: bool = False) -> np.ndarray:
    """Per-example losses [N, 1 + L*H]: column 0 `model`'s own, column 1 + l*H + h with head (l, h)'s
    parameters taken from `other` (same architecture and shapes). groups: per K/V group instead,
    [N, 1 + L*n_kv], every parameter of the group's heads taken at once (a group's heads are
    consecutive: one unit of G*d columns of O's input)."""
    model.eval(), other.eval()
    G = adapter.group_size(model.config) if groups else 1
    d = adapter.head_dim(model.config) * G

    def per_batch(rp: Replay, idx, labels):
        patch = {}  # layer -> (O, patched context, O's weight difference), once for all its units here

        def hooks(l, heads):  # copy j: head heads[j] of layer l patched
            if l not in patch:
                o_mod = adapter.linear(model, l, "o")
                d_o = (adapter.weight(other, l, "o") - adapter.weight(model, l, "o")).detach().contiguous()  # [D, H*d]
                patch.clear()  # units come layer by layer: only the current layer's is kept
                patch[l] = (o_mod, _patched_context(rp, other, l), d_o)
            return _patch_hooks(*patch[l], heads, d, rp.o_rows)

        def score(lg):  # [B, C] -> loss [B]
            return (example_losses(lg, labels, task.is_regression).double(),)
        return score, hooks

    losses, = sweep(model, adapter, enc, pad_id, batch_size, max_tokens, per_batch,
                    FAST_PATHS.get(adapter.model_type), desc, progress, "while patching heads",
                    units_per_layer=adapter.num_heads(model.config) // G)
    return losses


def _both_ways(theta0, theta1, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int,
               max_tokens: int, progress: bool, what: str, groups: bool = False):
    """(forward losses, reverse losses, (effect_fwd, its SE, effect_rev, its SE) per unit [L, units]):
    patch_losses both ways, units heads or (groups) K/V groups."""
    cfg = theta0.config
    L, units = adapter.num_layers(cfg), adapter.num_heads(cfg) // (adapter.group_size(cfg) if groups else 1)
    kw = dict(batch_size=batch_size, max_tokens=max_tokens, progress=progress, groups=groups)
    fwd = patch_losses(theta0, theta1, adapter, enc, task, pad_id, desc=f"{what} (forward)", **kw)
    rev = patch_losses(theta1, theta0, adapter, enc, task, pad_id, desc=f"{what} (reverse)", **kw)
    # per-example values are kept so that value = m[:, 1:] - m[:, :1], as for importance
    return fwd, rev, (*mean_se(fwd[:, :1] - fwd[:, 1:], L, units), *mean_se(rev[:, 1:] - rev[:, :1], L, units))


def update_effect(theta0, theta1, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                  max_tokens: int = 1 << 14, progress: bool = True) -> UpdateEffectResult:
    fwd, rev, stats = _both_ways(theta0, theta1, adapter, enc, task, pad_id, batch_size, max_tokens, progress,
                                 "update effect")
    return UpdateEffectResult(*stats, -fwd.astype(np.float32), rev.astype(np.float32))


def _compute(x: Inputs) -> UpdateEffectResult:
    m0, m1, c = x.model("theta0"), x.model("theta1"), x.cfg
    return update_effect(m0, m1, get_adapter(m0), x.enc, x.task, x.pad_id, c.batch_size, c.max_tokens, c.progress)


UPDATE_EFFECT = Measurement.of(schema.UPDATE_EFFECT, UpdateEffectResult, _compute)


def group_effect(theta0, theta1, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                 max_tokens: int = 1 << 14, progress: bool = True) -> GroupEffectResult:
    """The update effect of each K/V group as a whole (every Q/K/V row and O column of the group's heads
    patched at once: a weight patch, as the per-head effect is without grouped-query attention), one
    row per query head holding its group's value; without grouped-query attention, the update effect."""
    _, _, stats = _both_ways(theta0, theta1, adapter, enc, task, pad_id, batch_size, max_tokens, progress,
                             "group effect", groups=True)
    return GroupEffectResult(*(np.repeat(x, adapter.group_size(theta0.config), axis=1) for x in stats))


def _compute_group(x: Inputs) -> GroupEffectResult:
    m0, m1, c = x.model("theta0"), x.model("theta1"), x.cfg
    return group_effect(m0, m1, get_adapter(m0), x.enc, x.task, x.pad_id, c.batch_size, c.max_tokens, c.progress)


UPDATE_EFFECT_GROUP = Measurement.of(schema.UPDATE_EFFECT_GROUP, GroupEffectResult, _compute_group)
