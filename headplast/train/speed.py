"""What makes training fast on a CPU without changing what is trained (bench/bench_train.py).

Measured on 2 cores with MiniLM-L6 and SST-2 (README, "Training speed"), where today's
Trainer spent its time:
- matrix products in fp32: bf16 autocast runs them on the CPU's AMX/AVX512-BF16 units (3-4x
  the fp32 rate) while weights, gradients and AdamW stay fp32;
- drawing dropout masks: torch's CPU generator needs about 10 ns per element and made a third
  of a LoRA step (every LoRA module draws its own mask); numpy's SFC64 bit generator gives four
  16-bit draws per 64-bit word, about 10x faster, and the masks keep their probability (to
  1/65536) and their scaling;
- casting LoRA's frozen weights: autocast caches the low-precision copy of a trainable weight
  for one forward pass but casts a frozen one at every call, every step; holding the frozen
  Linear weights in bf16 for the run gives the same products (4.5 ms of a ~100 ms LoRA step);
- gradient clipping: torch's total norm (9 ms per FFT step, and less accurate over the 11.7M
  embedding gradients, which it sums in fp32) and a pass rescaling every gradient (6 ms); BLAS
  dot products summed in float64 take 3 ms, and fused AdamW divides each gradient by the clip
  factor as it reads it (the hook torch's GradScaler uses), so no pass rescales them;
- the word embedding: full fine-tuning of MiniLM-L6 gives AdamW 30,522 vocabulary rows (half
  the model) to update every step, though SST-2's 8,000 training sentences look up 8,589 of
  them; training those rows as their own smaller embedding, the others only decayed as AdamW
  decays a row whose gradient is always zero, gives the same weights for a third less optimizer
  time;
- the last layer's work past attention: the task head reads token 0 only, so that layer's O,
  residual, LayerNorms and FFN are needed for token 0 alone (keys and values still see every
  token); cutting their inputs to token 0 gives the same logits and gradients for about 1/T of
  that work (what the ablation engine already does, measure/fastpath.py);
- walks of the module tree: Trainer calls model.train() and model.zero_grad() and counts FLOPs
  through num_parameters() at every step, and the fused clipping listed the trained parameters,
  each a walk over every module and parameter (3.1 ms of a ~90 ms LoRA step, 1.1 ms of an FFT
  step, timed with timeit); the model's mode is switched only when it changes, and the
  parameters and their count are listed once;
- page faults: glibc returns every freed block over 32 MB (e.g. the embedding gradient) to the
  OS and faults it in again at the next step; a higher mmap/trim threshold keeps it.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from headplast.arch.device import compute_device, native_bf16
from headplast.errors import HeadplastError

TRAIN_DTYPES = ("float32", "bfloat16")
DROPOUT_MASKS = ("numpy", "torch")
DEVICES = ("cpu", "cuda")
# every training speed setting (TrainConfig fields): None = the device's default, resolved once
SPEED = ("train_dtype", "dropout_masks", "last_layer_token0", "lean_steps", "tune_allocator", "fused_clip",
         "embedding_rows", "frozen_bf16")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def training_device(requested: str | None) -> torch.device:
    """Where Trainer trains: the CPU, or the first visible GPU (one device per run; --device takes
    cpu or cuda only, so arch.device's resolution gives cuda:0, and refuses cuda without a GPU)."""
    return compute_device(requested)


def hardware_defaults(device: torch.device) -> dict:
    """The speed settings a device gets when the user leaves them unset. Every trick was measured
    on a 2-core CPU only (bench/bench_train.py): on a GPU the default is plain Trainer with bf16
    autocast where the GPU computes bf16 natively, until they are measured there."""
    dtype = "bfloat16" if native_bf16(device) else "float32"
    if device.type == "cpu":
        return {"train_dtype": dtype, "dropout_masks": "numpy", "last_layer_token0": True, "lean_steps": True,
                "tune_allocator": True}
    return {"train_dtype": dtype, "dropout_masks": "torch", "last_layer_token0": False, "lean_steps": False,
            "tune_allocator": False}


def resolve_speed(cfg, recorded: dict | None = None):
    """(cfg with its device and every speed setting filled, {field: where its value came from}).

    A field the user set is kept; else the value `recorded` when this run was trained (so a run
    keeps its identity whichever machine looks at it: a CPU-only head node judging GPU runs);
    else the training device's default. fused_clip, embedding_rows and frozen_bf16 default to on
    on a CPU training in bfloat16 (they came with bfloat16 before they had flags)."""
    from dataclasses import replace

    recorded = recorded or {}
    filled, sources = {}, {}
    if cfg.device is None:  # not checked here: a head node without GPUs judges runs trained on one
        filled["device"] = recorded.get("device") or training_device(None).type
        sources["device"] = "recorded at training" if recorded.get("device") else "hardware default"
    device = torch.device(filled.get("device", cfg.device))
    probe = None
    for name in SPEED:
        if getattr(cfg, name) is not None:
            continue
        if name in recorded:
            filled[name], sources[name] = recorded[name], "recorded at training"
            continue
        if name in ("fused_clip", "embedding_rows", "frozen_bf16"):
            dtype = filled.get("train_dtype", cfg.train_dtype)
            filled[name] = device.type == "cpu" and dtype == "bfloat16"
        else:
            probe = probe or hardware_defaults(device)
            filled[name] = probe[name]
        sources[name] = f"hardware default ({device.type})"
    return replace(cfg, **filled), sources


def check_speed(cfg, device: torch.device) -> None:
    """Settings that cannot work on `device`, refused before anything is built."""
    if device.type == "cuda" and cfg.dropout_masks == "numpy":
        raise HeadplastError("--dropout-masks numpy draws every mask on the host and copies it to the GPU, "
                             "whose own generator is faster", "pass --dropout-masks torch (the default on a GPU)")
    if device.type == "cuda" and cfg.embedding_rows:
        raise HeadplastError("--embedding-rows is for CPUs: on a GPU its restore runs millions of tiny kernels, "
                             "and it is not bit-exact against CUDA's fused AdamW",
                             "pass --no-embedding-rows (the default on a GPU)")
    if cfg.frozen_bf16 and cfg.train_dtype != "bfloat16":
        raise HeadplastError("--frozen-bf16 holds frozen weights in bfloat16 for bfloat16 autocast; with "
                             f"--train-dtype {cfg.train_dtype} it would change the products",
                             "pass --no-frozen-bf16, or --train-dtype bfloat16")


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc only): no page faults per step for big tensors.
    Peak memory is unchanged; memory is returned when the process ends."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False


@contextmanager
def frozen_linears_in(model: nn.Module, dtype: torch.dtype):
    """While training under autocast to `dtype`: every frozen nn.Linear weight and bias held in
    `dtype` (autocast would cast it to exactly that at each call), the original fp32 tensors put
    back afterwards, on the device each parameter is on then. Trainable ones (LoRA's A/B, the task
    head, all of FFT) are left alone."""
    saved = []  # (module, attribute, original): a .to() may replace the Parameter objects themselves
    for mod in model.modules():
        if isinstance(mod, nn.Linear):  # peft's LoRA layers wrap an nn.Linear base_layer
            for name in ("weight", "bias"):
                p = getattr(mod, name)
                if p is not None and not p.requires_grad and p.dtype == torch.float32:
                    saved.append((mod, name, p.data))
                    p.data = p.data.to(dtype)
    try:
        yield len(saved)
    finally:
        # the model may have moved inside the block (Trainer puts it on the GPU, a caller may
        # cast it): each original goes back where the parameter is now, in the dtype the rest of
        # the model has now (its own fp32, unless the model was cast to another dtype)
        for mod, name, data in saved:
            p = getattr(mod, name)
            p.data = data.to(device=p.device, dtype=data.dtype if p.dtype == dtype else p.dtype)


def _token0(module, args):
    """Forward pre-hook: the first input [B, T, D] cut to [B, 1, D]. Contiguous: LoRA's products
    on the strided view made short batches slower."""
    return (args[0][:, :1].contiguous(), *args[1:])


@contextmanager
def last_layer_token0(model: nn.Module, adapter):
    """While training: the last layer's O projection and post-attention LayerNorm see token 0
    only, so it computes O, its dropout, the residual, the FFN and both norms for that token (the
    only one the task head reads: ArchAdapter.head_fn); queries, keys and values still see every
    token. Same logits and gradients; dropout masks there are drawn for token 0 only. Yields
    whether the family allows it (ArchAdapter.last_layer_token0_inputs)."""
    modules = adapter.last_layer_token0_inputs(model)
    hooks = [m.register_forward_pre_hook(_token0) for m in modules or ()]
    try:
        yield bool(hooks)
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def steady_steps(model: nn.Module):
    """While training: model.train() and model.zero_grad() without walking the module tree at
    every step. Trainer calls both at every step, and each walk visits every module and parameter
    (a LoRA model of MiniLM-L6 has 373 modules: train() 1.05 ms, zero_grad() 0.58 ms a call).
    - train(): the first call walks the tree as always (a fresh peft wrapper says "training" while
      the model inside is in eval mode); later calls return at once unless eval() or train(False)
      came in between (Trainer's evaluation). Fine-tuning never switches a submodule alone.
    - zero_grad(): sets to None the gradients of the parameters the model holds on entry: enter
      this after any module swap (UsedRows)."""
    params = list(model.parameters())
    real_train, real_zero_grad = model.train, model.zero_grad
    walked = [False]  # whether our last real train() set every module to training mode

    def train(mode: bool = True):
        if mode and walked[0] and model.training:  # a root's flag alone can be stale (peft's wrapper)
            return model
        walked[0] = mode
        return real_train(mode)

    def zero_grad(set_to_none: bool = True):
        if not set_to_none:
            return real_zero_grad(set_to_none)
        for p in params:
            p.grad = None

    model.train, model.zero_grad = train, zero_grad  # instance attributes shadow the methods
    try:
        yield
    finally:
        del model.train, model.zero_grad


def torch_optimizer(optimizer):
    """torch's optimizer inside the one Trainer steps (accelerate wraps it)."""
    return getattr(optimizer, "optimizer", optimizer)


class UsedRows(nn.Module):
    """The rows of an embedding that a training set looks up, trained as a smaller embedding.
    Vocabulary ids are mapped to rows through `lookup` (-1 for an id the data never uses, which
    nn.Embedding refuses). `decay` collects, per optimizer step, the factor by which AdamW's
    decoupled weight decay scaled the embedding (1 - lr * weight_decay)."""

    def __init__(self, full: nn.Embedding, used: torch.Tensor):
        super().__init__()
        lookup = torch.full((full.num_embeddings,), -1, dtype=torch.long, device=full.weight.device)
        lookup[used] = torch.arange(len(used), device=lookup.device)
        self.register_buffer("lookup", lookup, persistent=False)
        pad = -1 if full.padding_idx is None else int(lookup[full.padding_idx])
        # from the rows themselves: a fresh nn.Embedding would draw its init from torch's generator,
        # which Trainer has seeded (data order) by the time the model is set up for training
        self.rows = nn.Embedding.from_pretrained(full.weight.detach()[used].clone(), freeze=False,
                                                 padding_idx=pad if pad >= 0 else None)
        self.decay: list[float] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [B, T] vocabulary ids -> [B, T, H]
        return self.rows(self.lookup[ids])

    def record_step(self, optimizer) -> None:
        """After each optimizer step: the weight-decay factor that step gave these rows. Only
        AdamW: its update of a row with zero gradient and zero moments is exactly this factor."""
        opt = torch_optimizer(optimizer)
        if not isinstance(opt, torch.optim.AdamW):
            raise RuntimeError(f"UsedRows needs torch.optim.AdamW, got {type(opt).__name__}")
        group = next(g for g in opt.param_groups if any(p is self.rows.weight for p in g["params"]))
        self.decay.append(1 - group["lr"] * group["weight_decay"])


def _restrictable(model: nn.Module, emb) -> bool:
    """A plain nn.Embedding, trained, and not tied to another module (an LM head)."""
    if type(emb) is not nn.Embedding or not emb.weight.requires_grad or emb.max_norm is not None \
            or emb.scale_grad_by_freq or emb.sparse:
        return False
    return sum(p is emb.weight for _, p in model.named_parameters(remove_duplicate=False)) == 1


@contextmanager
def embedding_rows_in_use(model: nn.Module, token_ids: torch.Tensor):
    """While training: the input embedding trained as UsedRows of `token_ids` (every id the
    batches can hold, padding included), when it is a trained nn.Embedding of its own; yields
    the UsedRows, or None (nothing changed). Afterwards the embedding is back with the trained
    rows, and every other row scaled by each step's factor in turn: what AdamW (fused or not)
    does to a row whose gradient, and so both moments, stay zero, bit for bit."""
    get = getattr(model, "get_input_embeddings", None)
    full = get() if get else None
    if full is None or not _restrictable(model, full):
        yield None
        return
    used = torch.unique(token_ids.to(full.weight.device))
    rows = UsedRows(full, used)
    model.set_input_embeddings(rows)
    try:
        yield rows
    finally:
        model.set_input_embeddings(full)
        with torch.no_grad():
            unused = torch.ones(full.num_embeddings, dtype=torch.bool, device=used.device)
            unused[used] = False
            rest = full.weight[unused]
            for block in rest.split(1024):  # one block in cache through all the steps' factors
                for factor in rows.decay:
                    block.mul_(factor)
            full.weight[unused] = rest
            full.weight[used] = rows.rows.weight


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together: a BLAS dot product per tensor, summed in float64."""
    return torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)).double() for g in grads]).sum().sqrt()


def clip_in_step(optimizer, params, max_norm: float) -> torch.Tensor | None:
    """Clip the gradients of `params` to total norm `max_norm` inside the next step of a fused
    Adam/AdamW, which divides each gradient by `grad_scale` as it reads it: the same factor as
    torch.nn.utils.clip_grad_norm_ (max_norm / (norm + 1e-6), at most 1) without a pass over the
    gradients. Returns the norm before clipping; None for an optimizer that cannot (clip as usual)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return None
    norm = grad_norm(grads)
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0).float()
    return norm.float()


class NumpyDropout(nn.Module):
    """nn.Dropout with masks from a numpy bit generator: an element is kept when a uniform 16-bit
    integer (four per raw 64-bit draw) is at or above round(p * 65536); kept values are scaled by
    1 / (1 - p). Built as a 0/scale mask in the input's dtype: multiplying by a bool mask is
    10x slower on CPU than by a float one."""

    def __init__(self, p: float, bits: np.random.BitGenerator):
        super().__init__()
        self.p, self.bits = p, bits
        self.threshold = np.int16(int(round(p * 65536)) - 32768)
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        draws = self.bits.random_raw((n + 3) // 4).view(np.int16)[:n]
        keep = np.greater_equal(draws, self.threshold).view(np.uint8)
        mask = torch.from_numpy(keep).to(device=x.device, dtype=x.dtype).mul_(self.scale)
        return x * mask.view(x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _dropout_slots(model: nn.Module):
    """(parent, name, module) for every nn.Dropout (peft keeps LoRA's in ModuleDicts)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                yield parent, name, child


ATTENTION = "headplast_sdpa"


def sdpa_numpy_dropout(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kw):
    """transformers' SDPA attention, except in training with a NumpyDropout on the attention
    probabilities: then SDPA's own math path (what it runs on CPU when dropout > 0) with that
    module's masks. query/key/value [B, H, T, d]; returns ([B, T, H, d], None) as SDPA does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    drop = getattr(module, "dropout", None)
    if dropout == 0.0 or not isinstance(drop, NumpyDropout) or getattr(module, "is_causal", False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kw)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # [B, H, T, T]
    if attention_mask is not None:  # SDPA's masks: bool (True = attend) or additive
        scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
            else scores + attention_mask
    probs = drop(torch.softmax(scores, dim=-1))
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, sdpa_numpy_dropout)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextmanager
def numpy_dropout(model: nn.Module, seed: int):
    """Every nn.Dropout of `model` draws from one numpy bit generator seeded from the run's seed,
    attention probabilities included (models on transformers' SDPA interface switch to
    sdpa_numpy_dropout; others apply their attention's dropout module themselves). The original
    modules and attention are back afterwards."""
    bits = np.random.SFC64(seed)
    swapped = list(_dropout_slots(model))
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    for parent, name, mod in swapped:
        setattr(parent, name, NumpyDropout(mod.p, bits))
    if attention == "sdpa":
        _register_attention()
        config._attn_implementation = ATTENTION
    try:
        yield len(swapped)
    finally:
        for parent, name, mod in swapped:
            setattr(parent, name, mod)
        if attention == "sdpa":
            config._attn_implementation = attention
