"""Functional change per head: did what the head computes change, not just its weights?

  func_change(l, h) = 1 − CKA(X0, X1)
  attn_jsd(l, h)    = mean over query tokens i of JSD(A0[i, :], A1[i, :])

X0, X1 [n, d]: head h's output of layer l (its slice of O's input: the attention-weighted values,
before O) for every non-padding token of the eval subset (or of a fixed sample of
--extended-examples of its examples: measure.config.extended_indices), under θ0 and under θ1 on
the same inputs. CKA is linear CKA (Kornblith et al. 2019) with both centred over tokens:

  CKA = ||X1cᵀ X0c||²_F / (||X0cᵀ X0c||_F ||X1cᵀ X1c||_F)

It is 1 when X1 is X0 up to a rotation, an isotropic scaling and a shift (so a head whose values
were rotated and O counter-rotated reads 0 change, while U counts the rotation), and 0 when the
two are linearly unrelated. A0, A1: the head's attention pattern (softmax over keys, padding keys
at 0) under θ0 and θ1; JSD in nats (0 to ln 2), averaged over the non-padding query tokens (Clark
et al. 2019 read heads by these patterns). The patterns come from the family's eager attention
(`output_attentions`), switched on for these two passes and restored after.

Both are sums over tokens, accumulated per batch on the device in float64 (one forward pass of θ0
and one of θ1 per batch; nothing leaves the device until the end): per head n, Σx0, Σx1, Σx0x0ᵀ,
Σx1x1ᵀ, Σx0x1ᵀ and ΣJSD, FOLDS·L·H·(3d² + 2d + 2) doubles in all.

Reliability: each batch falls at random into one of FOLDS folds (seeded; fewer with fewer batches),
and both are also computed on half of the folds against the other half, HALF_SPLITS times (`func_change_halves.npy`
[2 measures, splits, 2 halves, L·H]); the analysis turns their agreement into a split-half
reliability like importance's (Spearman-Brown). Folds of batches, not of examples, so that no
mask or index leaves the device per batch.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.data.tokenize import Encoded, sorted_batches
from headplast.errors import HeadplastError
from headplast.measure.config import extended_indices
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.gating import capture_o_inputs
from headplast.measure.results import FuncChangeResult
from headplast.store import schema

FOLDS = 10
HALF_SPLITS = 50
SEED = 0


def _stats(x0: torch.Tensor, x1: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    """Token sums of one layer: x0, x1 [B, T, H, d], w [B, T] (1 for a real token, 0 for padding).
    Returns n [], Σx0 [H, d], Σx1, Σx0x0ᵀ [H, d, d], Σx1x1ᵀ, Σx0x1ᵀ (float64)."""
    x0, x1 = x0.double() * w[..., None, None], x1.double() * w[..., None, None]
    return [w.sum(), x0.sum((0, 1)), x1.sum((0, 1)), torch.einsum("bthd,bthe->hde", x0, x0),
            torch.einsum("bthd,bthe->hde", x1, x1), torch.einsum("bthd,bthe->hde", x0, x1)]


def cka_from_sums(n, s0, s1, c00, c11, c01) -> torch.Tensor:
    """Linear CKA [...] of centred features from token sums (n [...], s [..., d], c [..., d, d])."""
    n = n[..., None, None]
    k00 = c00 - s0[..., :, None] * s0[..., None, :] / n
    k11 = c11 - s1[..., :, None] * s1[..., None, :] / n
    k01 = c01 - s0[..., :, None] * s1[..., None, :] / n
    num = k01.pow(2).sum((-2, -1))
    den = k00.pow(2).sum((-2, -1)).sqrt() * k11.pow(2).sum((-2, -1)).sqrt()
    return num / den


def _jsd(a0: torch.Tensor, a1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ over real query tokens of JSD(a0[b, h, i], a1[b, h, i]) per head [H]; a [B, H, T, T], w [B, T]."""
    a0, a1 = a0.float(), a1.float()  # per query in fp32 (a pattern's terms are small), summed in fp64
    m = (a0 + a1) / 2
    kl = lambda p: (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(-1)  # noqa: E731  [B, H, T]
    return ((kl(a0) + kl(a1)).double() / 2 * w[:, None, :]).sum((0, 2))


@contextmanager
def _eager_attention(*models):
    """The models' attention in its eager implementation (the one that returns its weights), restored after."""
    before = [m.config._attn_implementation for m in models]
    try:
        for m in models:
            m.set_attn_implementation("eager")
        yield
    finally:
        for m, b in zip(models, before):
            m.set_attn_implementation(b)


ATTENTION_ENTRIES = 1 << 26  # attention weights kept at once per model (L·H·B·T²): the batch is cut to fit


def _patterns(model, adapter: ArchAdapter, batch: dict) -> tuple[dict, tuple]:
    """(O's inputs {layer: [B, T, H·d]}, attention patterns L x [B, H, T, T]) of one forward pass."""
    with capture_o_inputs(model, adapter) as store:
        pats = model(**batch, output_attentions=True).attentions
    L = adapter.num_layers(model.config)
    if pats is None or len(pats) != L or any(p is None for p in pats):
        raise HeadplastError(f"{type(model).__name__} returned no attention weights with its eager attention "
                             "(output_attentions): attn_jsd cannot be measured for this family",
                             "this family needs its attention weights exposed before func_change can measure it "
                             "(an adapter's concern: headplast.arch); please report it with the model_type")
    return dict(store), pats


@torch.no_grad()
def function_sums(theta0, theta1, adapter: ArchAdapter, enc: Encoded, pad_id: int, batch_size: int = 32,
                  folds: int = FOLDS, seed: int = SEED, max_entries: int = ATTENTION_ENTRIES) -> list[torch.Tensor]:
    """Per fold, layer and head the token sums of `_stats` (n [F, L, H], Σx0 [F, L, H, d], ...,
    Σx0x1ᵀ [F, L, H, d, d]) and ΣJSD [F, L, H]; batches assigned to F = min(folds, batches) folds at
    random. A batch runs in slices of at most `max_entries` attention weights per model (the sums
    are the same: they add over examples)."""
    theta0.eval(), theta1.eval()
    device = next(theta0.parameters()).device
    L, H, d = adapter.num_layers(theta0.config), adapter.num_heads(theta0.config), adapter.head_dim(theta0.config)
    n_batches = -(-len(enc) // batch_size)
    folds = max(1, min(folds, n_batches))
    shapes = [(), (d,), (d,), (d, d), (d, d), (d, d), ()]
    acc = [torch.zeros(folds, L, H, *s, dtype=torch.float64, device=device) for s in shapes]
    fold_of = np.random.default_rng(seed).permutation(np.arange(n_batches) % folds)  # balanced folds
    with _eager_attention(theta0, theta1):
        for b, (_, batch) in enumerate(sorted_batches(enc, batch_size, pad_id)):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            B, T = batch["input_ids"].shape
            step = max(1, max_entries // (L * H * T * T))
            f = int(fold_of[b])
            for s in range(0, B, step):
                part = {k: v[s:s + step] for k, v in batch.items()}
                (o0, p0), (o1, p1) = (_patterns(m, adapter, part) for m in (theta0, theta1))
                w = part["attention_mask"].to(torch.float64)  # [b, T]
                for l in range(L):
                    b_, T_, _ = o0[l].shape
                    sums = _stats(o0[l].view(b_, T_, H, d), o1[l].view(b_, T_, H, d), w)
                    for a, v in zip(acc, [*sums, _jsd(p0[l], p1[l], w)]):
                        a[f, l] += v if v.dim() else v.expand(H)
    return acc


def _measures(acc: list[torch.Tensor]) -> torch.Tensor:
    """[2, L, H]: 1 − CKA and the mean JSD from (summed) token sums."""
    n, *cka, jsd = acc
    return torch.stack([1 - cka_from_sums(n, *cka), jsd / n])


def func_change(acc: list[torch.Tensor], splits: int = HALF_SPLITS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(func_change and attn_jsd over every token [2, L, H], the same on the halves of `splits`
    random splits of the folds in two [2, splits, 2, L·H]; no splits with fewer than 2 folds)."""
    total = _measures([a.sum(0) for a in acc])
    F = acc[0].shape[0]
    if F < 2:
        return total.cpu().numpy(), np.zeros((2, 0, 2, total[0].numel()))
    rng = np.random.default_rng(seed)
    halves = []
    for _ in range(splits):
        pick = torch.zeros(F, dtype=torch.bool, device=acc[0].device)
        pick[torch.as_tensor(rng.permutation(F)[:F // 2], device=acc[0].device)] = True
        halves.append(torch.stack([_measures([a[m].sum(0) for a in acc]).flatten(1) for m in (pick, ~pick)], 1))
    return total.cpu().numpy(), torch.stack(halves, 1).cpu().numpy()


def _compute(x: Inputs) -> FuncChangeResult:
    m0, m1 = x.model("theta0"), x.model("theta1")
    ad = get_adapter(m0)
    enc = x.enc.take(extended_indices(len(x.enc), x.cfg.extended_examples))
    (fc, jsd), halves = func_change(function_sums(m0, m1, ad, enc, x.pad_id, x.cfg.batch_size))
    return FuncChangeResult(fc, jsd, halves.astype(np.float32))


FUNC_CHANGE = Measurement.of(schema.FUNC_CHANGE, FuncChangeResult, _compute)
