"""LoRA set-up with exact module names.

peft matches a target_modules entry as a name suffix ("dense" also hits the FFN and the
pooler), so we always pass full module names resolved through the architecture adapter.
"""

from __future__ import annotations

from headplast.arch.adapters import KINDS, ArchAdapter
from headplast.errors import HeadplastError


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


def make_lora_model(model, adapter: ArchAdapter, r: int, alpha: float, dropout: float, targets: list[str]):
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=targets, bias="none",
        # SEQ_CLS saves only `classifier`: the pooler / pre_classifier must be listed too
        modules_to_save=list(adapter.head_modules),
    )
    return get_peft_model(model, cfg)


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
    if "embeddings" in clean:
        return "embeddings"
    stem = clean.rsplit(".", 1)[0]
    if any(stem.endswith(s) for s in attn_suffixes):
        return "attention_qkvo"
    if any(stem.endswith(s) for s in adapter.ffn):
        return "ffn"
    return "other"  # layer norms, relative position tables, ...
