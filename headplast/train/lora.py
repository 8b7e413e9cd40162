"""LoRA set-up with exact module names.

peft matches a target_modules entry as a name suffix ("dense" also hits the FFN and the
pooler), so we always pass full module names resolved through the architecture adapter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from headplast.arch.adapters import KINDS, ArchAdapter
from headplast.errors import HeadplastError
from headplast.store import schema


def resolve_targets(adapter: ArchAdapter, model, spec: str = "attn") -> list[str]:
    """Full module names to adapt.

    spec: comma-separated tokens: 'attn' (Q,K,V,O), any of 'q','k','v','o', 'ffn', or
    explicit module names of the task model (e.g. bert.encoder.layer.0.attention.self.query).
    """
    L = adapter.num_layers(model.config)
    names: list[str] = []
    existing = dict(model.named_modules())
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        if tok in ("attn", "qkvo"):
            names += [adapter.module_name(l, k) for l in range(L) for k in KINDS]
        elif tok in KINDS:
            if adapter.fused_qkv and tok != "o":
                raise HeadplastError(f"--lora-targets {tok}: this family's Q, K and V are one module "
                                     f"({adapter.qkvo[0]}), so a LoRA on it adapts all three",
                                     "use attn (Q/K/V and O) or name the module: " + adapter.module_name(0, tok))
            names += [adapter.module_name(l, tok) for l in range(L)]
        elif tok == "ffn":
            names += [n for l in range(L) for n in adapter.ffn_names(l)]
        elif tok in existing:
            names.append(tok)
        else:
            raise HeadplastError(
                f"--lora-targets: '{tok}' is neither a keyword (attn, q, k, v, o, ffn) nor a module "
                f"of this model", "use a keyword or a full module name, e.g. " + adapter.module_name(0, "q"))
    if not names:
        raise HeadplastError("--lora-targets selects no module", "use attn (the default)")
    return list(dict.fromkeys(names))  # unique, in order


def make_lora_model(model, adapter: ArchAdapter, r: int, alpha: float, dropout: float, targets: list[str],
                    ranks: dict[str, int] | None = None):
    """peft LoRA on exactly `targets`; `ranks` ({module: rank}) overrides r per module, with alpha
    scaled alongside (alpha_m = alpha * r_m / r) so every module keeps LoRA's scale alpha / r and
    only the rank differs from uniform r."""
    from peft import LoraConfig, TaskType, get_peft_model

    # peft matches pattern keys as regular expressions on a dot boundary: escape the exact names
    rank_pattern = {re.escape(n): k for n, k in (ranks or {}).items()}
    alpha_pattern = {re.escape(n): alpha * k / r for n, k in (ranks or {}).items()}
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=targets, bias="none", rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        fan_in_fan_out=adapter.conv1d,  # GPT-2's Conv1D stores weights [in, out]
        # SEQ_CLS saves only `classifier`: the pooler / pre_classifier must be listed too
        modules_to_save=list(adapter.head_modules),
    )
    return get_peft_model(model, cfg)


def module_shapes(model, names: list[str]) -> dict[str, tuple[int, int]]:
    """{module: (in_features, out_features)} of Linear modules and of transformers' Conv1D (GPT-2,
    weights stored [in, out])."""
    mods = dict(model.named_modules())
    return {n: (m.in_features, m.out_features) if hasattr(m, "in_features") else tuple(m.weight.shape)
            for n, m in ((n, mods[n]) for n in names)}


def adapted_modules(peft_model) -> list[str]:
    """Names (in the task model) of the modules peft actually wrapped with LoRA."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return [n[len(prefix):] if n.startswith(prefix) else n
            for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


def trainable_audit(model, adapter: ArchAdapter) -> dict:
    """Count of trainable and total parameters per group."""
    groups: dict[str, dict[str, int]] = {}
    attn_suffixes = tuple(adapter.qkvo)
    for name, p in model.named_parameters():
        if ".original_module." in name:  # peft's frozen copy of a module it trains in full
            continue
        g = _group(name, adapter, attn_suffixes)
        d = groups.setdefault(g, {"trainable": 0, "total": 0})
        d["total"] += p.numel()
        if p.requires_grad:
            d["trainable"] += p.numel()
    total = sum(d["total"] for d in groups.values())
    trainable = sum(d["trainable"] for d in groups.values())
    return {"groups": groups, "trainable": trainable, "total": total,
            "trainable_fraction": trainable / max(total, 1)}


def _group(name: str, adapter: ArchAdapter, attn_suffixes) -> str:
    clean = name.replace("base_model.model.", "").replace(".modules_to_save.default", "")
    clean = clean.replace(".original_module", "").replace(".base_layer", "")
    if "lora_" in name:
        return "lora"
    if any(clean.startswith(h + ".") for h in adapter.head_modules):
        return "task_head"
    if "embeddings" in clean or "embed_tokens" in clean or clean.startswith(("transformer.wte.", "transformer.wpe.")):
        return "embeddings"
    stem = clean.rsplit(".", 1)[0]
    if any(stem.endswith(s) for s in attn_suffixes):
        return "attention_qkvo"
    if any(stem.endswith(s) for s in adapter.ffn):
        return "ffn"
    return "other"  # layer norms, relative position tables, ...


# --- importance-guided ranks -------------------------------------------------------------------
class _RankBy(Sequence):
    """uniform, then every schema's `rank_by` columns (I_pre, U, effect_fwd), read when used (the
    parser is built per call), so a measurement declared after import is a choice too."""

    def _all(self) -> tuple[str, ...]:
        return ("uniform", *schema.rank_columns())

    def __getitem__(self, i):
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


RANK_BY = _RankBy()
ROUNDING = ("rank_m = 1 + a share proportional to the module's score (at most min(in, out); a module at that cap "
            "passes its excess on), by water-filling, then rounded down and the remaining rank units given to the largest remainders "
            "(ties: module order); modules of different shapes are allocated within their shape group, each "
            "group keeping r per module, so the LoRA parameters equal those of uniform r exactly")


def module_scores(by: str, heads: dict[str, np.ndarray], adapter: ArchAdapter, targets: list[str],
                  num_layers: int) -> dict[str, float]:
    """A score per adapted module from per-head scores ([L, H] arrays by heads.csv column).

    U: the Frobenius norm of the module's part of the update, sqrt(sum_h U_kind[l, h]^2) (of the
    whole layer for an FFN module). I_pre / effect_fwd: sum over the layer's heads of max(score, 0)
    (a head whose removal helps gets no rank), the same for Q, K, V, O and the FFN of a layer."""
    where: dict = {}
    for l in range(num_layers):  # a module holds one kind, or (GPT-2's c_attn) Q, K and V
        for k in KINDS:
            where.setdefault(adapter.module_name(l, k), (l, []))[1].append(k)
    where.update({n: (l, None) for l in range(num_layers) for n in adapter.ffn_names(l)})
    out = {}
    for name in targets:
        if name not in where:
            raise HeadplastError(f"--rank-by {by}: {name} is not an attention or FFN module of a layer, so no "
                                 "head score applies to it", "use --lora-targets attn (or attn,ffn)")
        l, kinds = where[name]
        if by == "U":
            parts = [heads[f"U_{k}"][l] for k in (kinds or KINDS)]
            out[name] = float(np.sqrt(sum((p ** 2).sum() for p in parts)))
        else:
            out[name] = float(np.clip(heads[by][l], 0, None).sum())
    return out


def allocate_ranks(scores: dict[str, float], shapes: dict[str, tuple[int, int]], r: int) -> dict[str, int]:
    """Integer ranks proportional to `scores` with the parameters of rank r everywhere (see ROUNDING).

    shapes: {module: (in_features, out_features)}; a rank-k LoRA of it has k * (in + out) parameters."""
    bad = [n for n, s in scores.items() if not np.isfinite(s)]
    if bad:
        raise HeadplastError(f"the score of {bad[0]} is not finite ({scores[bad[0]]})",
                             "re-measure the --rank-from run (its heads.csv has NaN for this score)")
    groups: dict[int, list[str]] = {}
    for n in scores:
        groups.setdefault(sum(shapes[n]), []).append(n)
    ranks = {}
    for names in groups.values():
        caps = np.array([min(shapes[n]) for n in names])
        if r > caps.min():
            raise HeadplastError(f"--lora-r {r} exceeds the smallest adapted dimension ({caps.min()})",
                                 "use a smaller --lora-r")
        s = np.array([scores[n] for n in names])
        ranks.update(zip(names, _round_ranks(s, caps, r * len(names)).tolist()))
    return ranks


def _round_ranks(s: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    x = _water_fill(np.clip(s, 0, None), caps, total)
    k = np.floor(x).astype(int)
    order = np.argsort(-(x - k), kind="stable")
    for i in order[:total - k.sum()]:
        k[i] += 1
    assert k.sum() == total and (k >= 1).all() and (k <= caps).all(), (k, total)
    return k


def _water_fill(s: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """Real x_i = clip(1 + t * s_i, 1, cap_i) summing to `total` (up to a tiny excess, so floor()
    still sums to at most total). Scores of zero share what the capped positive ones cannot take."""
    pos = s > 0
    if not pos.any():  # no information: uniform
        return _water_fill(np.ones_like(s), caps, total) if s.size else s
    if caps[pos].sum() + (~pos).sum() < total:  # positives all at their cap, the rest spread evenly
        x = caps.astype(float)
        x[~pos] = _water_fill(np.ones((~pos).sum()), caps[~pos], total - int(caps[pos].sum()))
        return x
    lo, hi = 0.0, float(total) / s[pos].min() + 1.0
    for _ in range(200):
        t = (lo + hi) / 2
        lo, hi = (t, hi) if np.clip(1 + t * s, 1, caps).sum() < total else (lo, t)
    return np.clip(1 + hi * s, 1, caps)
