"""Head gating: scale each head's slice of the input of the attention output projection O.

transformers 5 has no head_mask (passing one is silently ignored), so we gate with forward
pre-hooks on O. A gate of 1 leaves the model unchanged bit for bit; a gate of 0 removes the
head's context vector (the O bias stays). With `means`, the gate interpolates towards the
head's mean output instead of towards 0 (mean ablation), or towards its output on another
example (resample ablation).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from headplast.arch.adapters import ArchAdapter


def first_rows(x: torch.Tensor, t: int) -> torch.Tensor:
    return x[:, :t]


def _target(mean: torch.Tensor, B: int, T: int, n_heads: int, dtype, rows) -> torch.Tensor:
    """What a gate of 0 moves a head to: a mean output [H*d] (the same everywhere), or per-example
    outputs [B0, T0, H*d] (resample ablation) for k = B / B0 stacked copies, on O's T positions
    (`rows`: which ones, when T < T0)."""
    if mean.dim() == 1:
        return mean.to(dtype).view(1, 1, n_heads, -1)
    r = rows(mean, T).to(dtype)
    return r.repeat(B // r.shape[0], 1, 1).view(B, T, n_heads, -1)


def _gate_hook(n_heads: int, gate: torch.Tensor, mean: torch.Tensor | None, rows=first_rows):
    def hook(module, args):
        x = args[0]  # [B, T, H*d]
        B, T, D = x.shape
        xh = x.view(B, T, n_heads, D // n_heads)
        g = gate.to(x.dtype)
        g = g.view(B, 1, n_heads, 1) if g.dim() == 2 else g.view(1, 1, n_heads, 1)  # [B|1, 1, H, 1]
        if mean is None:
            xh = xh * g
        else:
            xh = xh * g + (1 - g) * _target(mean, B, T, n_heads, x.dtype, rows)
        return (xh.reshape(B, T, D), *args[1:])
    return hook


@contextmanager
def head_gates(model, adapter: ArchAdapter, gates, means: torch.Tensor | None = None, rows=first_rows):
    """Install gates for the duration of the block.

    gates: {layer: [H] or [B, H]} or a tensor [L, H] / [B, L, H].
    means: optional [L, H*d] per-head mean outputs (mean ablation), or {layer: [B, T, H*d]} per-example
    outputs (resample ablation); rows(x, t): x's rows where O sees t < T positions (Replay.o_rows).
    Hooks are always removed on exit, even when the block raises.
    """
    H = adapter.num_heads(model.config)
    if torch.is_tensor(gates):
        gates = {l: (gates[:, l] if gates.dim() == 3 else gates[l]) for l in range(gates.shape[-2])}
    handles = []
    try:
        for layer, g in gates.items():
            o = adapter.linear(model, layer, "o")
            m = None if means is None else means[layer]
            handles.append(o.register_forward_pre_hook(_gate_hook(H, g, m, rows)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_o_inputs(model, adapter: ArchAdapter):
    """Record the input of every layer's O projection: yields a dict layer -> [B, T, H*d]."""
    store: dict[int, torch.Tensor] = {}
    handles = []

    def make(layer):
        def hook(module, args):
            store[layer] = args[0].detach()
        return hook
    try:
        for layer in range(adapter.num_layers(model.config)):
            handles.append(adapter.linear(model, layer, "o").register_forward_pre_hook(make(layer)))
        yield store
    finally:
        for h in handles:
            h.remove()
