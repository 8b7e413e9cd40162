"""Record one unmodified forward pass of a batch, then replay the layers above any point for k
modified copies of the batch at once (the engine behind exact ablation).

A change at layer l (a gated head, patched weights) leaves everything below l as it was, so
the replay starts from the recorded input of layer l (or of its output projection O) and
runs only the layers above, for k variants stacked along the batch. Every layer gets the
arguments the encoder gave it in the recorded pass (masks, position biases, ...), repeated
for the k copies; and whatever the encoder does between layers (DeBERTa's conv after layer
0) is done too, so the result is exactly what a full forward pass would give.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from headplast.arch.adapters import ArchAdapter, gather_rows
from headplast.measure.fastpath import FastPath, additive_mask
from headplast.measure.gating import capture_o_inputs


@contextmanager
def record_layer_inputs(model, adapter: ArchAdapter):
    """Yields a list that fills with (args, kwargs) of each layer call during a forward pass."""
    calls: list = []
    handles = [layer.register_forward_pre_hook(lambda m, a, kw: calls.append((a, kw)), with_kwargs=True)
               for layer in adapter.layer_modules(model)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


# None: Replay.read_token_only's rule; True / False: forced (bench/gpu_check.py measures the read-token
# last layer against the full one on a GPU and in bf16)
READ_TOKEN: bool | None = None


class Replay:
    """The recorded pass of one batch [B, T]; `logits` are the unmodified model's."""

    def __init__(self, model, adapter: ArchAdapter, batch: dict):
        self.model, self.adapter = model, adapter
        self.layers = adapter.layer_modules(model)
        self.L = len(self.layers)
        self.mask = batch["attention_mask"]  # [B, T]
        self.B = self.mask.shape[0]
        self.pos = adapter.read_positions(model, batch["input_ids"])  # [B]: the token the task head reads
        with record_layer_inputs(model, adapter) as calls, capture_o_inputs(model, adapter) as ctxs:
            # no KV cache: a replayed layer would append to the recorded pass's cache
            nocache = {"use_cache": False} if adapter.reads_last else {}
            self.logits = model(**batch, **nocache).logits  # [B, C]
        self.calls, self.ctxs = calls, ctxs  # per layer: (args, kwargs); input of O [B, T, D]

    def rep(self, x, k: int):
        """Repeat every per-example tensor (leading dim B) k times along the batch."""
        if torch.is_tensor(x):
            return x.repeat(k, *([1] * (x.dim() - 1))) if k > 1 and x.dim() >= 1 and x.shape[0] == self.B else x
        if isinstance(x, (list, tuple)):
            return type(x)(self.rep(v, k) for v in x)
        return x

    def _arguments(self, i: int, k: int):
        args, kwargs = self.calls[i]
        shared = self.adapter.shared_layer_args  # e.g. DeBERTa's relative positions: [1, T, T] even if B = 1
        return self.rep(args[1:], k), {n: v if n in shared else self.rep(v, k) for n, v in kwargs.items()}

    def input_of(self, i: int, k: int) -> torch.Tensor:
        return self.rep(self.calls[i][0][0], k)  # [k*B, T, D]

    def _after(self, i: int):
        return self.adapter.after_layer(self.model, i) if self.adapter.after_layer else None

    def finish_layer(self, i: int, h: torch.Tensor, k: int) -> torch.Tensor:
        """What the encoder does to layer i's output before the next layer (usually nothing)."""
        op = self._after(i)
        return h if op is None else op(h, self.input_of(0, k), self.rep(self.mask, k))

    def layer(self, i: int, h: torch.Tensor, k: int) -> torch.Tensor:
        args, kwargs = self._arguments(i, k)
        return self.finish_layer(i, self.adapter.layer_output(self.layers[i](h, *args, **kwargs)), k)

    def run_from(self, start: int, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits [k*B, C] of layers start..L-1 run on `h` [k*B, T, D]."""
        for i in range(start, self.L):
            h = self.layer(i, h, k)
        return self.head_logits(h, k)

    def head_logits(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits [k*B, C] from the last layer's output h [k*B, T, D] of k stacked copies (decoders:
        at the read positions found once, self.pos)."""
        if not self.adapter.reads_last:
            return self.adapter.logits(self.model, h)
        return self.adapter.read_token_logits(self.model, gather_rows(h, self.rep(self.pos, k)))

    def read_rows(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The read token's row of a per-example x [B, T, D], repeated k times -> [k*B, 1, D]."""
        return self.rep(x[:, :1] if not self.adapter.reads_last else gather_rows(x, self.pos), k)

    def o_rows(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """A per-example x [B, T, ...] on the t positions an O input of this replay has: all T, or
        (t = 1 < T: from_o_input's last layer) the read token's row [B, 1, ...]."""
        if t == x.shape[1]:
            return x
        assert t == 1, f"an O input of {t} of {x.shape[1]} positions"
        return self.read_rows(x, 1)

    def read_token_only(self) -> bool:
        """Whether from_o_input computes the last layer for the read token only (token 0, or each
        example's last real token). In fp32 and fp64 on a CPU, where it equals the full layer (tests)
        and was measured faster (bench/); elsewhere the last layer runs through the model's own
        modules: on a GPU it is unmeasured (bench/gpu_check.py phase C measures it), and in
        bf16/fp16 its eager attention would differ from the model's fused kernel by a rounding that
        every head's importance would share."""
        if READ_TOKEN is not None:
            return READ_TOKEN
        h = self.calls[-1][0][0]  # the last layer's recorded input
        return h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)

    def from_o_input(self, fast: FastPath, l: int, k: int) -> torch.Tensor:
        """Logits [k*B, C] when layer l's O input is changed by hooks the caller installed.

        Restarts at O of layer l (attention below O is unchanged), runs the middle layers in
        full and, where the family allows, the last layer for the read token only (all the task
        head reads: token 0, or each example's last real token).
        """
        ctx, h_in = self.ctxs[l], self.calls[l][0][0]
        last = self.L - 1
        read = self.read_token_only() and self._after(last) is None  # the last layer for the read token only
        if l == last and read:
            return self.adapter.read_token_logits(
                self.model, fast.finish(self.layers[l], self.read_rows(ctx, k), self.read_rows(h_in, k)))
        h = self.finish_layer(l, fast.finish(self.layers[l], self.rep(ctx, k), self.rep(h_in, k)), k)
        if not read or fast.read_context is None or l == last:
            return self.run_from(l + 1, h, k)
        for i in range(l + 1, last):
            h = self.layer(i, h, k)
        add_mask = self.rep(additive_mask(self.mask, h.dtype), k)
        pos = self.rep(self.pos, k)
        c = fast.read_context(self.layers[last], h, add_mask, self._arguments_call(last, k), pos)  # [k*B, 1, D]
        return self.adapter.read_token_logits(self.model, fast.finish(self.layers[last], c, gather_rows(h, pos)))

    def _arguments_call(self, i: int, k: int):
        args, kwargs = self._arguments(i, k)
        return (self.calls[i][0][:1] + tuple(args), kwargs)
