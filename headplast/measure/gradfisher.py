"""Gradient and Fisher scores per head, from per-example gradients in one backward per batch.

Per-example weight gradients of a Linear y = x W^T are sum_t gout[t]^T x[t]; we form them
from the layer's input and output gradient (captured with hooks) instead of looping over
examples. Per-example gate gradients come from gates with a batch dimension.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from headplast.arch.adapters import KINDS, ArchAdapter, get_adapter
from headplast.data.tokenize import Encoded, sorted_batches
from headplast.measure.ablation import example_losses
from headplast.measure.gating import head_gates
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.results import GradFisherResult


@contextmanager
def per_example_sq_norms(model, adapter: ArchAdapter, acc: torch.Tensor):
    """Accumulate into acc[L, H] the sum over examples of ||d loss_x / d W_head||^2 (Q/K/V/O weights)."""
    L, H = acc.shape
    handles = []

    def make(layer, kind):
        def fwd(module, args, out):
            x = args[0].detach()  # [B, T, in]

            def on_grad(g):  # g: [B, T, out]
                dt = torch.float64 if g.dtype == torch.float64 else torch.float32
                G = torch.einsum("bto,bti->boi", g.to(dt), x.to(dt))  # per-example dW [B, out, in]
                if kind == "o":  # head h owns columns h*d:(h+1)*d of W_O
                    sq = G.pow(2).sum(1).view(G.shape[0], H, -1).sum(-1)
                else:  # and rows h*d:(h+1)*d of W_Q, W_K, W_V
                    sq = G.pow(2).sum(2).view(G.shape[0], H, -1).sum(-1)
                acc[layer] += sq.sum(0).to(acc.dtype)
            out.register_hook(on_grad)
        return fwd
    try:
        for l in range(L):
            for kind in KINDS:
                handles.append(adapter.linear(model, l, kind).register_forward_hook(make(l, kind)))
        yield acc
    finally:
        for h in handles:
            h.remove()


def _head_param_norms(model, adapter: ArchAdapter, grads: dict) -> np.ndarray:
    L, H = adapter.num_layers(model.config), adapter.num_heads(model.config)
    out = np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            sq = sum(adapter.head_weight(grads[(l, k)], model.config, k, h).pow(2).sum().item() for k in KINDS)
            out[l, h] = np.sqrt(sq)
    return out


def grad_fisher(model, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 16,
                progress: bool = True) -> GradFisherResult:
    """grad_norm, fisher, gate_grad, gate_fisher and taylor for every head (see SPEC 2.2.3)."""
    model.eval()  # dropout off: gradients of the deterministic model
    device = next(model.parameters()).device
    L, H = adapter.num_layers(model.config), adapter.num_heads(model.config)
    weights = {(l, k): adapter.linear(model, l, k).weight for l in range(L) for k in KINDS}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    grad_sum = {key: torch.zeros_like(w, dtype=torch.float32) for key, w in weights.items()}
    fisher_sum = torch.zeros(L, H, device=device, dtype=torch.float64)
    g_abs, g_sq, g_sum = (np.zeros((L, H)) for _ in range(3))
    N = len(enc)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for _, batch in tqdm(list(sorted_batches(enc, batch_size, pad_id)), desc="grad/fisher",
                             disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            B = labels.shape[0]
            gates = torch.ones(B, L, H, device=device, requires_grad=True)  # per-example gates
            for w in weights.values():
                w.grad = None
            with head_gates(model, adapter, gates), per_example_sq_norms(model, adapter, fisher_sum):
                loss = example_losses(model(**batch).logits, labels, task.is_regression).sum()
                loss.backward()  # sum of per-example losses: each gate row sees only its example
            gg = gates.grad.double().cpu().numpy()  # [B, L, H] = d loss_x / d g
            g_abs += np.abs(gg).sum(0)
            g_sq += (gg ** 2).sum(0)
            g_sum += gg.sum(0)
            for key, w in weights.items():
                grad_sum[key] += w.grad.float()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
            p.grad = None
    grad_norm = _head_param_norms(model, adapter, {k: v / N for k, v in grad_sum.items()})
    return GradFisherResult(grad_norm, fisher_sum.double().cpu().numpy() / N, g_abs / N, g_sq / N, -g_sum / N)


def _compute(x: Inputs) -> GradFisherResult:
    model = x.model("theta0")
    return grad_fisher(model, get_adapter(model), x.enc, x.task, x.pad_id, x.cfg.grad_batch_size, x.cfg.progress)


GRADFISHER = Measurement(
    "gradfisher_pre", GradFisherResult, _compute, needs=("theta0", "eval"),
    labels={"grad_norm": "gradient norm ||∂L/∂θ_head||", "fisher": "empirical Fisher (sum over head params)",
            "gate_grad": "gate gradient mean |∂L_x/∂g|", "gate_fisher": "gate Fisher mean (∂L_x/∂g)^2",
            "taylor": "Taylor estimate −mean ∂L_x/∂g (nats)"},
    log_columns=("grad_norm", "fisher", "gate_grad", "gate_fisher"),
    pairs=(("I_pre", "grad_norm"), ("I_pre", "fisher"), ("I_pre", "gate_grad"), ("I_pre", "taylor")),
    settings=("dtype",))
