"""Joint update effect: every head's update of a layer (and of the whole model) applied at once,
against the sum of the single-head effects (effect_fwd, headplast.measure.effect).

  joint_fwd(l)     = mean_x [loss_x(theta0) - loss_x(theta0 with every head of layer l from theta1)]
  joint_fwd(model) = mean_x [loss_x(theta0) - loss_x(theta0 with every head of every layer from theta1)]

"Every head from theta1" is what effect_fwd patches for one head, for all of them: Q/K/V weights
and biases, O's weight; O's bias, LayerNorms, FFN, embeddings and the task head stay theta0's.
If the heads' effects added up, joint_fwd(l) would be the sum of effect_fwd over layer l's heads;
the difference is their interaction (headplast.analysis.interactions).

On the replay engine (headplast.measure.replay), as the update effect: per batch one recorded pass
of theta0; per layer, one pass of its attention with every head's Q/K/V from theta1 gives every
head's patched context, which hooks on O put in place (plus theta1's O weight on it) before the
family's fast path finishes the model from O upwards; then one plain forward pass with every
layer's tensors swapped in (swapped back after). Per-example losses stay on the device and are
copied to the host once per batch.

On every eval example, or a fixed sample of --extended-examples of them (measure.config.
extended_indices); their indices are in joint_examples.npy, so that the analysis pairs them with
effect_fwd's rows.

Files: heads.csv's `layer_joint_fwd` (the head's layer's joint_fwd, the same for each head of a
layer), losses_joint_fwd.npy [N, L + 2] (column 0 theta0, 1 + l layer l patched, L + 1 every
layer: losses, not negated) and joint_effect.jsonl (one row per layer and one for the model:
mean gain and its paired standard error).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.data.tokenize import Encoded, sorted_batches
from headplast.errors import HeadplastError
from headplast.measure.ablation import example_losses
from headplast.measure.config import extended_indices
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.effect import _patched_context, o_hooks
from headplast.measure.fastpath import FAST_PATHS
from headplast.measure.headloop import check_finite
from headplast.measure.replay import Replay
from headplast.measure.results import JointResult
from headplast.store import schema


def _per_head_modules(model, other, adapter: ArchAdapter, l: int):
    """[(module, other's module, with bias)] of what a head's update is in layer l: Q/K/V weights
    and biases, O's weight (its bias is shared by every head)."""
    return [(adapter.linear(model, l, k), adapter.linear(other, l, k), k != "o") for k in ("q", "k", "v", "o")]


@contextmanager
def heads_from(model, other, adapter: ArchAdapter, layers):
    """Every head of `layers` taken from `other`, by swapping the two models' tensors (no copy: a
    7B model's attention weights are GBs); swapped back after, whatever happens."""
    pairs = [(m.weight, o.weight) for l in layers for m, o, bias in _per_head_modules(model, other, adapter, l)]
    pairs += [(m.bias, o.bias) for l in layers for m, o, bias in _per_head_modules(model, other, adapter, l)
              if bias and m.bias is not None and o.bias is not None]
    pairs = list({id(a): (a, b) for a, b in pairs}.values())  # GPT-2's Q/K/V: one module, swapped once
    done = []
    try:
        for a, b in pairs:
            a.data, b.data = b.data, a.data
            done.append((a, b))
        yield
    finally:
        for a, b in reversed(done):
            a.data, b.data = b.data, a.data


@contextmanager
def _whole_layer_hooks(o_module, ctx1: torch.Tensor, d_o: torch.Tensor, rows):
    """O reads ctx1 (every head's context with the other model's Q/K/V) and adds d_o @ it (the other
    model's O weight, O's own bias kept): effect._patch_hooks with every head in one copy.
    rows(ctx1, T'): ctx1 on the T' positions O sees (the read token only in the engine's last layer)."""
    def pre(module, args):
        return (rows(ctx1, args[0].shape[1]), *args[1:])

    def post(module, args, out):
        return out + rows(ctx1, out.shape[1]) @ d_o.T
    with o_hooks(o_module, pre, post):
        yield


@torch.no_grad()
def joint_losses(model, other, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """Per-example losses [N, L + 2] of `model`: its own, with each layer's heads from `other`, with
    every layer's (see module docstring)."""
    model.eval(), other.eval()
    device = next(model.parameters()).device
    L, N = adapter.num_layers(model.config), len(enc)
    fast = FAST_PATHS.get(adapter.model_type)
    host = np.zeros((N, L + 2))
    bar = tqdm(total=N, desc="update effect (joint)", unit="ex", disable=not progress)
    for idx, batch in sorted_batches(enc, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")

        def loss(logits):  # [B, C] -> [B]
            return example_losses(logits, labels, task.is_regression).double()
        rp = Replay(model, adapter, batch)
        buf = torch.zeros(len(idx), L + 2, dtype=torch.float64, device=device)  # [B, L + 2]
        buf[:, 0] = loss(rp.logits)
        for l in range(L):  # as the update effect patches one head, with every head of the layer at once
            o_mod = adapter.linear(model, l, "o")
            d_o = (adapter.weight(other, l, "o") - adapter.weight(model, l, "o")).detach().contiguous()  # [D, H*d]
            with _whole_layer_hooks(o_mod, _patched_context(rp, other, l), d_o, rp.o_rows):
                buf[:, 1 + l] = loss(rp.run_from(l, rp.input_of(l, 1), 1) if fast is None
                                     else rp.from_o_input(fast, l, 1))
        with heads_from(model, other, adapter, range(L)):
            buf[:, L + 1] = loss(model(**batch).logits)
        host[idx] = buf.cpu().numpy()  # once per batch
        bar.update(len(idx))
    bar.close()
    if N == 0:
        raise HeadplastError("no examples to measure", "use a larger --eval-size")
    check_finite(host, "while patching every head of a layer")
    return host


def _gain(diff: np.ndarray) -> tuple[float, float]:
    """Mean and paired standard error of per-example gains [N]."""
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return float(diff.mean()), se


def joint_result(losses: np.ndarray, H: int, examples: np.ndarray | None = None) -> JointResult:
    """The result of per-example losses [N, L + 2] of the eval examples `examples` (default: all):
    heads.csv's column, the .npy files and the jsonl rows."""
    L = losses.shape[1] - 2
    rows = []
    for scope, col, layer in [*(("layer", 1 + l, l) for l in range(L)), ("model", L + 1, None)]:
        m, se = _gain(losses[:, 0] - losses[:, col])
        rows.append({"scope": scope, "layer": layer, "joint_fwd": m, "joint_fwd_se": se})
    per_layer = np.array([r["joint_fwd"] for r in rows[:L]])
    examples = np.arange(len(losses)) if examples is None else np.asarray(examples)
    return JointResult(np.repeat(per_layer[:, None], H, 1), losses.astype(np.float64), rows, examples.astype(np.int64))


def update_joint(theta0, theta1, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                 progress: bool = True, examples: np.ndarray | None = None) -> JointResult:
    """On the eval examples `examples` of enc (default: all)."""
    sub = enc if examples is None else enc.take(examples)
    losses = joint_losses(theta0, theta1, adapter, sub, task, pad_id, batch_size, progress)
    return joint_result(losses, adapter.num_heads(theta0.config), examples)


def _compute(x: Inputs) -> JointResult:
    m0, m1, c = x.model("theta0"), x.model("theta1"), x.cfg
    return update_joint(m0, m1, get_adapter(m0), x.enc, x.task, x.pad_id, c.batch_size, c.progress,
                        extended_indices(len(x.enc), c.extended_examples))


UPDATE_JOINT = Measurement.of(schema.UPDATE_JOINT, JointResult, _compute)
