"""Update effect per head: how much of fine-tuning's gain each head's own update carries.

  effect_fwd(l,h) = mean_x [loss_x(theta0) - loss_x(theta0 with head h's Q/K/V rows and O columns from theta1)]
  effect_rev(l,h) = mean_x [loss_x(theta1 with head h's Q/K/V rows and O columns from theta0) - loss_x(theta1)]

"Q/K/V rows" include their biases; everything that is not per head (O's bias, LayerNorms, FFN,
embeddings, task head) keeps the model's own values. LoRA's theta1 is the merged model.

Exact and fast, on the ablation engine (headplast.measure.replay): heads do not mix before O,
so one pass of layer l with *every* head's Q/K/V taken from the other model gives each head's
patched context at once (slice h is what patching head h alone gives). Head h patched is then
"O input slice h replaced by that context, plus (W_O_other - W_O)[:, h] times it added to O's
output", which hooks on O apply to k stacked copies, replayed from O of layer l upwards.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.data.tokenize import Encoded, sorted_batches
from headplast.errors import HeadplastError
from headplast.measure.ablation import _chunk_size, example_losses
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.fastpath import FAST_PATHS
from headplast.measure.gating import capture_o_inputs
from headplast.measure.replay import Replay
from headplast.measure.results import UpdateEffectResult
from headplast.measure.shard import current, gather, mine, units


@contextmanager
def _qkv_from(model, other, adapter: ArchAdapter, l: int):
    """Every head's Q/K/V (weights and biases) of layer l taken from `other`."""
    mods = [(adapter.linear(model, l, k), adapter.linear(other, l, k)) for k in ("q", "k", "v")]
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
def _patch_hooks(o_module, ctx1: torch.Tensor, d_o: torch.Tensor, heads: list[int], d: int):
    """Copy j of the k stacked copies gets head heads[j] patched: its slice of O's input replaced
    by ctx1's, and d_o[:, slice] @ that slice added to O's output (one tensor op for all copies)."""
    B, k, h0 = ctx1.shape[0], len(heads), heads[0]
    H = ctx1.shape[-1] // d
    if heads != list(range(h0, h0 + k)):
        raise ValueError(f"heads {heads}: a block of consecutive heads (headplast.measure.shard.units)")
    # slices, not index lists: an index list is copied to the device, a wait for the GPU per block
    select = torch.zeros(k, 1, 1, H, 1, dtype=ctx1.dtype, device=ctx1.device)  # [k, 1, 1, H, 1]
    select[:, 0, 0, h0:h0 + k, 0] = torch.eye(k, dtype=ctx1.dtype, device=ctx1.device)
    d_sel = d_o.view(d_o.shape[0], H, d)[:, h0:h0 + k].contiguous()  # [D_out, k, d]

    def pre(module, args):
        x = args[0]  # [k*B, T', H*d]; T' = 1 where the engine needs token 0 only
        T = x.shape[1]
        xh = x.view(k, B, T, H, d)
        c = ctx1[:, :T].view(1, B, T, H, d)
        return ((xh + select * (c - xh)).view(k * B, T, H * d), *args[1:])

    def post(module, args, out):
        T = out.shape[1]
        c = ctx1[:, :T].view(B, T, H, d)[:, :, h0:h0 + k].contiguous()  # [B, T', k, d]
        return out + torch.einsum("btkd,okd->kbto", c, d_sel).reshape(k * B, T, -1)
    handles = [o_module.register_forward_pre_hook(pre), o_module.register_forward_hook(post)]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


@torch.no_grad()
def patch_losses(model, other, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                 max_tokens: int = 1 << 14, progress: bool = True, desc: str = "update effect") -> np.ndarray:
    """Per-example losses [N, 1 + L*H]: column 0 `model`'s own, column 1 + l*H + h with head (l, h)'s
    parameters taken from `other` (same architecture and shapes)."""
    model.eval(), other.eval()
    device = next(model.parameters()).device
    L, H, d = adapter.num_layers(model.config), adapter.num_heads(model.config), adapter.head_dim(model.config)
    fast = FAST_PATHS.get(adapter.model_type)
    losses = np.zeros((len(enc), 1 + L * H), dtype=np.float64)
    shard = current()  # other processes compute other heads (headplast.measure.shard)
    owned = np.zeros(losses.shape, dtype=bool)
    bar = tqdm(total=len(enc) * L * H // shard.world, desc=desc, unit="head-ex", disable=not progress)
    for idx, batch in sorted_batches(enc, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        B, T = batch["input_ids"].shape
        rp = Replay(model, adapter, batch)
        # the batch's losses stay on the device, copied to the host once per batch (no wait per head)
        b_losses = torch.zeros(B, 1 + L * H, dtype=torch.float64, device=device)
        b_losses[:, 0] = example_losses(rp.logits, labels, task.is_regression).double()
        owned[idx, 0] = shard.leader
        patch = {}  # layer -> (O, patched context, O's weight difference), once for all its units here
        for l, heads in mine(units(L, H, _chunk_size(H, B, T, max_tokens)), L, shard):
            if l not in patch:
                o_mod = adapter.linear(model, l, "o")
                d_o = adapter.linear(other, l, "o").weight.data - o_mod.weight.data  # [D, H*d]
                patch = {l: (o_mod, _patched_context(rp, other, l), d_o)}
            o_mod, ctx1, d_o = patch[l]
            k = len(heads)
            with _patch_hooks(o_mod, ctx1, d_o, heads, d):
                out = rp.run_from(l, rp.input_of(l, k), k) if fast is None else rp.from_o_input(fast, l, k)
            for j, h in enumerate(heads):
                lg = out[j * B:(j + 1) * B]
                b_losses[:, 1 + l * H + h] = example_losses(lg, labels, task.is_regression).double()
                owned[idx, 1 + l * H + h] = True
            bar.update(B * k)
        losses[idx] = b_losses.cpu().numpy()
    bar.close()
    losses, = gather(owned, [losses], [0])
    if not np.isfinite(losses).all():
        raise HeadplastError("non-finite losses while patching heads (NaN/inf in the model's outputs)",
                             "check the checkpoints (was training stable?) or use --dtype float32")
    return losses


def _mean_se(diff: np.ndarray, L: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    N = diff.shape[0]
    se = diff.std(0, ddof=1) / np.sqrt(N) if N > 1 else np.full(L * H, np.nan)
    return diff.mean(0).reshape(L, H), se.reshape(L, H)


def update_effect(theta0, theta1, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                  max_tokens: int = 1 << 14, progress: bool = True) -> UpdateEffectResult:
    L, H = adapter.num_layers(theta0.config), adapter.num_heads(theta0.config)
    fwd = patch_losses(theta0, theta1, adapter, enc, task, pad_id, batch_size, max_tokens, progress,
                       "update effect (forward)")
    rev = patch_losses(theta1, theta0, adapter, enc, task, pad_id, batch_size, max_tokens, progress,
                       "update effect (reverse)")
    # per-example values are kept so that value = m[:, 1:] - m[:, :1], as for importance
    f, f_se = _mean_se(fwd[:, :1] - fwd[:, 1:], L, H)
    r, r_se = _mean_se(rev[:, 1:] - rev[:, :1], L, H)
    return UpdateEffectResult(f, f_se, r, r_se, -fwd.astype(np.float32), rev.astype(np.float32))


def _compute(x: Inputs) -> UpdateEffectResult:
    m0, m1, c = x.model("theta0"), x.model("theta1"), x.cfg
    return update_effect(m0, m1, get_adapter(m0), x.enc, x.task, x.pad_id, c.batch_size, c.max_tokens, c.progress)


UPDATE_EFFECT = Measurement(
    "update_effect", UpdateEffectResult, _compute, needs=("theta0", "theta1", "eval"),
    labels={"effect_fwd": "update effect (forward): loss gain from this head's update alone (nats)",
            "effect_rev": "update effect (reverse): loss when only this head is reverted to θ0 (nats)"},
    pairs=(("I_pre", "effect_fwd"), ("U", "effect_fwd"), ("I_post", "effect_rev"), ("U", "effect_rev")),
    settings=("dtype",), per_example={"effect_fwd": "losses_effect_fwd.npy", "effect_rev": "losses_effect_rev.npy"},
    split=True)
