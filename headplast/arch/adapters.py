"""Where Q, K, V and O live in each model family, and how heads are laid out in them.

Architecture support is data: one ArchAdapter per family, registered by `model_type`.
Heads are laid out as contiguous blocks of d = hidden/H rows of W_Q, W_K, W_V
([out, in] in torch's Linear) and the same block of columns of W_O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from headplast.errors import HeadplastError, did_you_mean

KINDS = ("q", "k", "v", "o")


def _pooler_then_classifier(pooler_path: str):
    def head(model, seq):  # seq [B, T, D] -> logits [B, C]
        pooled = _get(model, pooler_path)(seq)
        return model.classifier(model.dropout(pooled))
    return head


def _classifier_on_seq(model, seq):  # the classifier takes seq[:, 0] itself
    return model.classifier(seq)


def _deberta_after_layer(model, i: int):
    """DeBERTa-v2 with conv_kernel_size > 0 mixes the embeddings into layer 0's output."""
    conv = model.deberta.encoder.conv
    if i != 0 or conv is None:
        return None
    return lambda h, h0, mask: conv(h0, h, mask)


def _deberta_reuses_projections(config) -> bool:
    """share_att_key: query_proj and key_proj also project the relative position embeddings."""
    return bool(getattr(config, "relative_attention", False) and getattr(config, "share_att_key", False)
                and getattr(config, "pos_att_type", None))


def _distilbert_head(model, seq):
    x = torch.relu(model.pre_classifier(seq[:, 0]))
    return model.classifier(model.dropout(x))


@dataclass(frozen=True)
class ArchAdapter:
    model_type: str
    base: str  # attribute of the task model holding the encoder
    layers: str  # path from the base to the ModuleList of layers
    qkvo: tuple[str, str, str, str]  # paths from a layer to the Q, K, V, O Linear modules
    ffn: tuple[str, ...]  # paths from a layer to the FFN Linear modules
    head_modules: tuple[str, ...]  # task-head modules (full names) trained in full by every method
    head_fn: Callable  # (model, last_hidden [B,T,D]) -> logits; reads only token 0
    n_layers_attr: str = "num_hidden_layers"
    n_heads_attr: str = "num_attention_heads"
    hidden_attr: str = "hidden_size"
    returns_tuple: bool = False  # layer.forward returns (hidden, ...) rather than hidden
    # keyword arguments of a layer call that are the same for every example (never repeated
    # along the batch when the ablation engine replays a layer for several copies of a batch)
    shared_layer_args: tuple[str, ...] = ()
    # (model, layer index) -> None, or f(h, h0, mask) applied to that layer's output by the
    # encoder before the next layer (h0: the first layer's input, mask: [B, T] attention mask)
    after_layer: Callable | None = None
    # config -> whether Q/K/V/O are also applied to inputs shared by the whole batch (then
    # per-example gradients need batches of one example)
    reuses_projections_fn: Callable | None = None
    # paths from a layer to other modules whose rows belong to heads (not part of Q/K/V/O, so
    # not in U, the gradient scores or LoRA's default targets; listed in measure_meta.json)
    other_head_modules: tuple[str, ...] = ()
    # path from a layer to the LayerNorm that takes O's output plus the residual (post-LN
    # families): with it, training runs the last layer's O and FFN for token 0 only
    post_attention_norm: str | None = None

    # --- shape -------------------------------------------------------------
    def num_layers(self, config) -> int:
        return getattr(config, self.n_layers_attr)

    def num_heads(self, config) -> int:
        return getattr(config, self.n_heads_attr)

    def head_dim(self, config) -> int:
        return getattr(config, self.hidden_attr) // self.num_heads(config)

    # --- module access -----------------------------------------------------
    def layer_modules(self, model) -> nn.ModuleList:
        return _get(_get(model, self.base), self.layers)

    def linear(self, model, layer: int, kind: str) -> nn.Linear:
        return _get(self.layer_modules(model)[layer], self.qkvo[KINDS.index(kind)])

    def module_name(self, layer: int, kind: str) -> str:
        """Full module name of Q/K/V/O in the task model (exact, for peft's target_modules)."""
        return f"{self.base}.{self.layers}.{layer}.{self.qkvo[KINDS.index(kind)]}"

    def ffn_names(self, layer: int) -> list[str]:
        return [f"{self.base}.{self.layers}.{layer}.{p}" for p in self.ffn]

    def head_slice(self, config, head: int) -> slice:
        d = self.head_dim(config)
        return slice(head * d, (head + 1) * d)

    def head_weight(self, weight: torch.Tensor, config, kind: str, head: int) -> torch.Tensor:
        """Head h's part of a Q/K/V/O weight: rows for Q/K/V, columns for O."""
        s = self.head_slice(config, head)
        return weight[:, s] if kind == "o" else weight[s, :]

    def unmeasured_head_modules(self, model) -> list[str]:
        """Full names of the `other_head_modules` this model has."""
        names = dict(model.named_modules())
        return [n for l in range(self.num_layers(model.config)) for p in self.other_head_modules
                if (n := f"{self.base}.{self.layers}.{l}.{p}") in names]

    def last_layer_token0_inputs(self, model) -> tuple[nn.Module, nn.Module] | None:
        """The last layer's O and post-attention LayerNorm: cut to token 0 at their inputs, the
        layer computes only what the task head reads. None where that is not exact: no
        post-attention norm declared, or the encoder mixes something into that layer's output."""
        last = self.num_layers(model.config) - 1
        if self.post_attention_norm is None or (self.after_layer and self.after_layer(model, last)):
            return None
        layer = self.layer_modules(model)[last]
        return _get(layer, self.qkvo[3]), _get(layer, self.post_attention_norm)

    def reuses_projections(self, config) -> bool:
        return bool(self.reuses_projections_fn and self.reuses_projections_fn(config))

    def layer_output(self, out):
        return out[0] if self.returns_tuple or isinstance(out, tuple) else out

    def logits(self, model, seq: torch.Tensor) -> torch.Tensor:
        return self.head_fn(model, seq)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


_BERT_QKVO = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
_BERT_FFN = ("intermediate.dense", "output.dense")
_BERT_NORM = "attention.output.LayerNorm"

_ADAPTERS: dict[str, ArchAdapter] = {}


def register(adapter: ArchAdapter) -> ArchAdapter:
    _ADAPTERS[adapter.model_type] = adapter
    return adapter


register(ArchAdapter("bert", "bert", "encoder.layer", _BERT_QKVO, _BERT_FFN,
                     ("bert.pooler", "classifier"), _pooler_then_classifier("bert.pooler"),
                     post_attention_norm=_BERT_NORM))
register(ArchAdapter("roberta", "roberta", "encoder.layer", _BERT_QKVO, _BERT_FFN,
                     ("classifier",), _classifier_on_seq, post_attention_norm=_BERT_NORM))
register(ArchAdapter("electra", "electra", "encoder.layer", _BERT_QKVO, _BERT_FFN,
                     ("classifier",), _classifier_on_seq, post_attention_norm=_BERT_NORM))
register(ArchAdapter("deberta-v2", "deberta", "encoder.layer",
                     ("attention.self.query_proj", "attention.self.key_proj",
                      "attention.self.value_proj", "attention.output.dense"), _BERT_FFN,
                     ("pooler", "classifier"), _pooler_then_classifier("pooler"), returns_tuple=True,
                     shared_layer_args=("relative_pos", "rel_embeddings"), after_layer=_deberta_after_layer,
                     reuses_projections_fn=_deberta_reuses_projections,
                     # share_att_key=False: separate projections of the relative positions, per head
                     other_head_modules=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
                     post_attention_norm=_BERT_NORM))
register(ArchAdapter("distilbert", "distilbert", "transformer.layer",
                     ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
                     ("ffn.lin1", "ffn.lin2"), ("pre_classifier", "classifier"), _distilbert_head,
                     n_layers_attr="n_layers", n_heads_attr="n_heads", hidden_attr="dim",
                     post_attention_norm="sa_layer_norm"))
register(ArchAdapter("mpnet", "mpnet", "encoder.layer",
                     ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"),
                     _BERT_FFN, ("classifier",), _classifier_on_seq, returns_tuple=True,
                     post_attention_norm="attention.LayerNorm"))


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model_or_type) -> ArchAdapter:
    """The adapter for a model (or its config, or a model_type string)."""
    mt = model_or_type if isinstance(model_or_type, str) else getattr(
        getattr(model_or_type, "config", model_or_type), "model_type", None)
    if mt not in _ADAPTERS:
        raise HeadplastError(
            f"unsupported architecture model_type='{mt}'.{did_you_mean(mt, _ADAPTERS)} "
            f"Supported: {', '.join(supported_model_types())}.",
            "use a model of a supported family, or add an ArchAdapter for it with "
            "headplast.arch.adapters.register(...) (say where Q, K, V, O and the task head live)",
        )
    return _ADAPTERS[mt]
