"""Where Q, K, V and O live in each model family, and how heads are laid out in them.

Architecture support is data: one ArchAdapter per family, registered by `model_type`.
Heads are laid out as contiguous blocks of d rows of W_Q, W_K, W_V ([out, in] in torch's
Linear) and the same block of columns of W_O; d = hidden/H unless the config says `head_dim`
(Gemma). With grouped-query attention (n_kv_heads < H) query head h reads K/V group
h // (H / n_kv_heads): its K/V "slice" is that group's rows, shared with the group's other heads.
Encoders' task heads read token 0; decoders' read the last non-padding token (`reads_last`).
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


def _score_on_seq(model, seq):  # decoders: seq is already the read token [B, 1, D], normed
    return model.score(seq[:, 0])


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
    head_fn: Callable  # (model, last_hidden [B,T,D]) -> logits; reads only token 0 (decoders: the read token, normed)
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
    # decoders: the task head reads the last non-padding token (as transformers'
    # *ForSequenceClassification does), after the final norm at `final_norm` (path from the base)
    reads_last: bool = False
    final_norm: str | None = None
    n_kv_heads_attr: str | None = None  # grouped-query attention: config attribute of the K/V head count
    head_dim_attr: str | None = None  # config attribute of the head size where it need not be hidden / H (Gemma)
    # GPT-2: Q, K and V are thirds of one module's output (qkvo[0..2] name it), and its modules are
    # transformers' Conv1D, weights stored [in, out] (`weight` gives every kind as [out, in])
    fused_qkv: bool = False
    conv1d: bool = False

    # --- shape -------------------------------------------------------------
    def num_layers(self, config) -> int:
        return getattr(config, self.n_layers_attr)

    def num_heads(self, config) -> int:
        return getattr(config, self.n_heads_attr)

    def num_kv_heads(self, config) -> int:
        n = getattr(config, self.n_kv_heads_attr, None) if self.n_kv_heads_attr else None
        return self.num_heads(config) if n is None else n

    def group_size(self, config) -> int:
        """Query heads per K/V head (1 without grouped-query attention)."""
        return self.num_heads(config) // self.num_kv_heads(config)

    def head_dim(self, config) -> int:
        d = getattr(config, self.head_dim_attr, None) if self.head_dim_attr else None
        return d or getattr(config, self.hidden_attr) // self.num_heads(config)

    # --- module access -----------------------------------------------------
    def layer_modules(self, model) -> nn.ModuleList:
        return _get(self.base_of(model), self.layers)

    def base_of(self, model) -> nn.Module:
        """The task model's base (encoder or decoder stack); through a peft wrapper too (whose own
        `model` attribute would hide Llama's)."""
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        return _get(model, self.base)

    def linear(self, model, layer: int, kind: str) -> nn.Linear:
        return _get(self.layer_modules(model)[layer], self.qkvo[KINDS.index(kind)])

    def module_name(self, layer: int, kind: str) -> str:
        """Full module name of Q/K/V/O in the task model (exact, for peft's target_modules)."""
        return f"{self.base}.{self.layers}.{layer}.{self.qkvo[KINDS.index(kind)]}"

    def ffn_names(self, layer: int) -> list[str]:
        return [f"{self.base}.{self.layers}.{layer}.{p}" for p in self.ffn]

    # --- weights of one kind, [out, in] whatever the storage ---------------------
    def out_slice(self, config, kind: str) -> slice:
        """Where `kind` lies in its module's output (a third of a fused Q/K/V module; else all of it)."""
        if not (self.fused_qkv and kind in "qkv"):
            return slice(None)
        width = self.num_heads(config) * self.head_dim(config)
        i = "qkv".index(kind)
        return slice(i * width, (i + 1) * width)

    def kind_view(self, t: torch.Tensor, config, kind: str) -> torch.Tensor:
        """A module-shaped weight tensor (the weight, its gradient; [..., *weight.shape]) -> the kind's
        [..., out, in] part, a view (writes go through)."""
        if self.conv1d:
            t = t.transpose(-1, -2)
        return t[..., self.out_slice(config, kind), :]

    def weight(self, model, layer: int, kind: str) -> torch.Tensor:
        """Q/K/V/O's weight as [out, in] (a view of the parameter)."""
        return self.kind_view(self.linear(model, layer, kind).weight, model.config, kind)

    def bias(self, model, layer: int, kind: str) -> torch.Tensor | None:
        b = self.linear(model, layer, kind).bias
        return None if b is None else b[self.out_slice(model.config, kind)]

    def head_slice(self, config, head: int) -> slice:
        d = self.head_dim(config)
        return slice(head * d, (head + 1) * d)

    def kv_group(self, config, head: int) -> int:
        return head // self.group_size(config)

    def kind_head_slice(self, config, kind: str, head: int) -> slice:
        """Head h's rows of Q (columns of O); for K/V, those of h's group (shared under grouped-query attention)."""
        return self.head_slice(config, self.kv_group(config, head) if kind in "kv" else head)

    def head_weight(self, weight: torch.Tensor, config, kind: str, head: int) -> torch.Tensor:
        """Head h's part of a Q/K/V/O weight: rows for Q/K/V, columns for O (kind_head_slice)."""
        s = self.kind_head_slice(config, kind, head)
        return weight[:, s] if kind == "o" else weight[s, :]

    def head_bias(self, bias: torch.Tensor, config, kind: str, head: int) -> torch.Tensor:
        """Head h's part of a Q/K/V bias [out] (kind_head_slice)."""
        return bias[self.kind_head_slice(config, kind, head)]

    def head_share(self, config, kind: str) -> float:
        """The share of a head's K/V rows that counts towards that head in squared norms (U,
        gradient, Fisher): 1/group size, so the heads' squares add up to the matrix's."""
        return 1.0 / self.group_size(config) if kind in "kv" else 1.0

    def head_sq(self, G: torch.Tensor, config, kind: str) -> torch.Tensor:
        """[..., out, in] weight-shaped tensor -> [..., H] each query head's squared norm of its part
        (K/V: its group's part times head_share), on G's device, no host transfer."""
        H, d = self.num_heads(config), self.head_dim(config)
        if kind == "o":
            return G.pow(2).sum(-2).unflatten(-1, (H, d)).sum(-1)
        per = G.pow(2).sum(-1).unflatten(-1, (-1, d)).sum(-1)  # [..., H or n_kv]
        if per.shape[-1] == H:
            return per
        return per.repeat_interleave(self.group_size(config), dim=-1) * self.head_share(config, kind)

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

    def read_positions(self, model, input_ids: torch.Tensor) -> torch.Tensor:
        """[B] the position the task head reads: 0, or (decoders) the rightmost token that is not
        padding, computed as transformers' *ForSequenceClassification computes it."""
        if not self.reads_last:
            return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        pad = model.config.pad_token_id
        if pad is None:
            raise HeadplastError("the model's config has no pad_token_id, so the last token of a padded "
                                 "example cannot be found", "build theta0 with headplast (it sets the pad "
                                 "token from EOS) or set config.pad_token_id")
        idx = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return (idx * (input_ids != pad)).argmax(-1)

    def check_pad(self, model, pad_id: int) -> None:
        """Decoders find each example's last token by the config's pad id: batches padded with
        another id would be read at the wrong token. Raises before any work."""
        if self.reads_last and model.config.pad_token_id != pad_id:
            raise HeadplastError(f"the batches are padded with id {pad_id} but the model's config says "
                                 f"pad_token_id={model.config.pad_token_id}: its classifier would read the "
                                 "wrong token", "set model.config.pad_token_id = tokenizer.pad_token_id "
                                 "(headplast's theta0 does)")

    def read(self, model, seq: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
        """The part of the last layer's output [B, T, D] the task head reads: seq itself for
        encoders (their heads take token 0), the final-normed last token [B, 1, D] for decoders."""
        if not self.reads_last:
            return seq
        if input_ids is None:
            raise ValueError(f"{self.model_type}: the task head reads each example's last token; "
                             "pass input_ids to find it")
        return self._final_norm(model, gather_rows(seq, self.read_positions(model, input_ids)))

    def _final_norm(self, model, x: torch.Tensor) -> torch.Tensor:
        return x if self.final_norm is None else _get(self.base_of(model), self.final_norm)(x)

    def logits(self, model, seq: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, C] from the last layer's output [B, T, D] (decoders need input_ids to find
        each example's last token)."""
        return self.head_fn(model, self.read(model, seq, input_ids))

    def read_token_logits(self, model, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] from the last layer's output at the read token only, x [B, 1, D]."""
        return self.head_fn(model, self._final_norm(model, x))


def gather_rows(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] at one position per example, pos [B] -> [B, 1, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), pos][:, None]


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


# --- decoders: the classifier reads the last non-padding token after the final norm -------------
register(ArchAdapter("gpt2", "transformer", "h", ("attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj"),
                     ("mlp.c_fc", "mlp.c_proj"), ("score",), _score_on_seq, reads_last=True, final_norm="ln_f",
                     fused_qkv=True, conv1d=True))
_LLAMA_QKVO = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_LLAMA_FFN = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
for _mt in ("llama", "qwen2", "mistral", "gemma"):  # same layout; Q/K/V biases, windows, head_dim: config
    register(ArchAdapter(_mt, "model", "layers", _LLAMA_QKVO, _LLAMA_FFN, ("score",), _score_on_seq,
                         reads_last=True, final_norm="norm", n_kv_heads_attr="num_key_value_heads",
                         head_dim_attr="head_dim"))


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
