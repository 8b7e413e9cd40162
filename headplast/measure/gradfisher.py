"""Gradient and Fisher scores per head, from per-example gradients in one backward per batch.

Per-example weight gradients of a Linear y = x W^T are sum_t gout[t]^T x[t]; we form them
from the layer's input and output gradient (captured with hooks) instead of looping over
examples. Per-example gate gradients come from gates with a batch dimension.

DeBERTa with share_att_key also applies Q and K to the relative-position embeddings, one input
shared by the batch whose output gradient is the batch's sum; there, per-example gradients come
from torch.func instead (vmap of the gradient of one example's loss: each example is a batch of
one inside, so that call is per example too, and the batch still runs as one batch).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from headplast.arch.adapters import KINDS, ArchAdapter, get_adapter
from headplast.data.tokenize import Encoded, sorted_batches
from headplast.measure.ablation import example_losses
from headplast.measure.gating import head_gates
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.results import GradFisherResult
from headplast.store import schema


@contextmanager
def per_example_sq_norms(model, adapter: ArchAdapter, acc: torch.Tensor, B: int):
    """Accumulate into acc[L, H] the sum over examples of ||d loss_x / d W_head||^2 (Q/K/V/O weights).

    A module applied more than once in a forward pass (DeBERTa with share_att_key also applies
    Q and K to the relative position embeddings) gets, per example, the sum of its calls'
    gradients before squaring. A call on an input shared by the batch (leading dim 1) only
    yields the batch's summed gradient, so it is exact only for batches of one example: for
    those models (ArchAdapter.reuses_projections) grad_fisher uses per_example_grads instead.
    """
    L, H = acc.shape
    config = model.config
    handles = []
    pending: dict = {}  # (layer, kind) -> [calls whose gradient has not arrived, summed G]

    def add(key, G):
        entry = pending[key]
        entry[0] -= 1
        entry[1] = G if entry[1] is None else entry[1] + G
        if entry[0] == 0:
            acc[key[0]] += adapter.head_sq(pending.pop(key)[1], config, key[1]).sum(0).to(acc.dtype)

    def make(key):
        def fwd(module, args, out):
            x = args[0].detach()  # [B, T, in], or [1, S, in] for an input shared by the batch
            if x.shape[0] != B and B != 1:
                raise RuntimeError(f"{key}: an input shared by the batch needs per-example batches of 1")
            pending.setdefault(key, [0, None])[0] += 1

            cols = adapter.out_slice(config, key[1])  # GPT-2: this kind's third of the fused Q/K/V output

            def on_grad(g):  # g: [b, T, out]
                dt = torch.float64 if g.dtype == torch.float64 else torch.float32
                add(key, torch.einsum("bto,bti->boi", g[..., cols].to(dt), x.to(dt)))  # per-example dW [b, out, in]
            out.register_hook(on_grad)
        return fwd

    def flush():  # calls whose output did not reach the loss: square what arrived
        for key in list(pending):
            entry = pending.pop(key)
            if entry[1] is not None:
                acc[key[0]] += adapter.head_sq(entry[1], config, key[1]).sum(0).to(acc.dtype)
    try:
        for l in range(L):
            for kind in KINDS:
                handles.append(adapter.linear(model, l, kind).register_forward_hook(make((l, kind))))
        yield flush
    finally:
        for h in handles:
            h.remove()


def per_example_grads(model, adapter: ArchAdapter, weights: dict, gates: torch.Tensor, batch: dict,
                      labels: torch.Tensor, regression: bool) -> tuple[dict, torch.Tensor]:
    """Per-example gradients of each example's loss: {(layer, kind): [B, out, in]} for the Q/K/V/O
    weights, and [B, L, H] for the gates; one vmapped pass for the batch, exact whatever inputs
    the batch shares (each example is a batch of one inside vmap)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = {key: name_of[id(w)] for key, w in weights.items()}
    params = {names[key]: w.detach() for key, w in weights.items()}

    def loss_of_one(p, g, example, y):
        example = {k: v.unsqueeze(0) for k, v in example.items()}
        with head_gates(model, adapter, g.unsqueeze(0)):
            logits = functional_call(model, p, args=(), kwargs=example).logits
        return example_losses(logits, y.unsqueeze(0), regression).sum()

    g_params, g_gates = vmap(grad(loss_of_one, argnums=(0, 1)), in_dims=(None, 0, 0, 0))(params, gates, batch, labels)
    return {key: g_params[n] for key, n in names.items()}, g_gates


def _head_param_norms(model, adapter: ArchAdapter, grads: dict) -> np.ndarray:
    L = adapter.num_layers(model.config)
    sq = torch.stack([sum(adapter.head_sq(adapter.kind_view(grads[(l, k)].double(), model.config, k), model.config, k)
                          for k in KINDS) for l in range(L)])
    return sq.sqrt().cpu().numpy()  # [L, H], one host transfer


def grad_fisher(model, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 16,
                progress: bool = True) -> GradFisherResult:
    """grad_norm, fisher, gate_grad, gate_fisher and taylor for every head (definitions: heads.csv glossary in README.md)."""
    model.eval()  # dropout off: gradients of the deterministic model
    adapter.check_pad(model, pad_id)
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
        by_vmap = adapter.reuses_projections(model.config)  # see per_example_sq_norms
        for _, batch in tqdm(list(sorted_batches(enc, batch_size, pad_id)), desc="grad/fisher",
                             disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            B = labels.shape[0]
            gates = torch.ones(B, L, H, device=device, requires_grad=not by_vmap)  # per-example gates
            if by_vmap:
                per_example, g_gates = per_example_grads(model, adapter, weights, gates, batch, labels,
                                                         task.is_regression)
                for (l, kind), G in per_example.items():
                    G = adapter.kind_view(G if G.dtype == torch.float64 else G.float(), model.config, kind)
                    fisher_sum[l] += adapter.head_sq(G, model.config, kind).sum(0).to(fisher_sum.dtype)
                    grad_sum[(l, kind)] += per_example[(l, kind)].sum(0).float()
                gg = g_gates.double().cpu().numpy()  # [B, L, H] = d loss_x / d g, once per batch
            else:
                for w in weights.values():
                    w.grad = None
                with head_gates(model, adapter, gates), per_example_sq_norms(model, adapter, fisher_sum, B) as flush:
                    loss = example_losses(model(**batch).logits, labels, task.is_regression).sum()
                    loss.backward()  # sum of per-example losses: each gate row sees only its example
                    flush()
                gg = gates.grad.double().cpu().numpy()  # [B, L, H] = d loss_x / d g
                for key, w in weights.items():
                    grad_sum[key] += w.grad.float()
            g_abs += np.abs(gg).sum(0)
            g_sq += (gg ** 2).sum(0)
            g_sum += gg.sum(0)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
            p.grad = None
    grad_norm = _head_param_norms(model, adapter, {k: v / N for k, v in grad_sum.items()})
    return GradFisherResult(grad_norm, fisher_sum.double().cpu().numpy() / N, g_abs / N, g_sq / N, -g_sum / N)


def _compute(x: Inputs) -> GradFisherResult:
    model = x.model("theta0")
    return grad_fisher(model, get_adapter(model), x.enc, x.task, x.pad_id, x.cfg.grad_batch_size, x.cfg.progress)


GRADFISHER = Measurement.of(schema.GRADFISHER, GradFisherResult, _compute)

