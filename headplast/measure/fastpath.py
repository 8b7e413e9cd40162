"""Per-family pieces of a layer, so the ablation engine can skip work that cannot change.

Ablating a head of layer l changes nothing before O of layer l: the engine restarts from
the recorded input of O (`finish`). In sequence classification the task head reads only
token 0 of the last layer, so that layer needs keys and values for every token but
queries, O and the FFN only for token 0 (`first_token_context`).
A family without an entry here falls back to full layer calls (still exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F


def _attend(q, k, v, add_mask, n_heads, bias=None):
    """softmax(q k^T / sqrt(d) + bias + mask) v. q [B,Tq,D], k/v [B,T,D], add_mask [B,1,1,T] -> [B,Tq,D]."""
    B, Tq, D = q.shape
    d = D // n_heads
    q = q.view(B, Tq, n_heads, d).transpose(1, 2)  # [B, H, Tq, d]
    k = k.view(B, -1, n_heads, d).transpose(1, 2)  # [B, H, T, d]
    v = v.view(B, -1, n_heads, d).transpose(1, 2)
    s = torch.matmul(q, k.transpose(-1, -2)) * d ** -0.5  # [B, H, Tq, T]
    if bias is not None:
        s = s + bias
    p = F.softmax(s + add_mask, dim=-1)
    return torch.matmul(p, v).transpose(1, 2).reshape(B, Tq, D)


def additive_mask(attention_mask: torch.Tensor, dtype) -> torch.Tensor:
    """[B, T] of 0/1 -> [B, 1, 1, T] of 0 / most negative value."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@dataclass(frozen=True)
class FastPath:
    finish: Callable  # (layer, ctx [B,T,D] = input of O, h_in [B,T,D]) -> layer output
    first_token_context: Callable | None  # (layer, h [B,T,D], add_mask, call) -> ctx of token 0 [B,1,D]


# --- BERT, RoBERTa, ELECTRA (and DeBERTa's post-attention part) ------------------------
def _bert_finish(layer, ctx, h_in):
    a = layer.attention.output(ctx, h_in)  # O (gated by hooks) + dropout + LayerNorm(residual)
    return layer.output(layer.intermediate(a), a)


def _bert_first(layer, h, add_mask, call):
    sa = layer.attention.self
    return _attend(sa.query(h[:, :1]), sa.key(h), sa.value(h), add_mask, sa.num_attention_heads)


# --- DistilBERT ---------------------------------------------------------------------------
def _distil_finish(layer, ctx, h_in):
    a = layer.sa_layer_norm(layer.attention.out_lin(ctx) + h_in)
    return layer.output_layer_norm(layer.ffn(a) + a)


def _distil_first(layer, h, add_mask, call):
    at = layer.attention
    return _attend(at.q_lin(h[:, :1]), at.k_lin(h), at.v_lin(h), add_mask, at.n_heads)


# --- MPNet (relative position bias computed once by the encoder) --------------------------
def _mpnet_finish(layer, ctx, h_in):
    a = layer.attention.LayerNorm(layer.attention.dropout(layer.attention.attn.o(ctx)) + h_in)
    return layer.output(layer.intermediate(a), a)


def _mpnet_first(layer, h, add_mask, call):
    args, kwargs = call
    bias = args[2] if len(args) > 2 else kwargs.get("position_bias")
    at = layer.attention.attn
    bias = None if bias is None else bias[..., :1, :]
    return _attend(at.q(h[:, :1]), at.k(h), at.v(h), add_mask, at.num_attention_heads, bias)


# --- Llama, Qwen2, Mistral, Gemma (pre-norm; the task head reads each example's last token, so
# the last layer runs in full: first_token_context is None) ------------------------------------
def _llama_finish(layer, ctx, h_in):
    a = h_in + layer.self_attn.o_proj(ctx)
    return a + layer.mlp(layer.post_attention_layernorm(a))


def _gpt2_finish(layer, ctx, h_in):
    a = h_in + layer.attn.resid_dropout(layer.attn.c_proj(ctx))
    return a + layer.mlp(layer.ln_2(a))


FAST_PATHS = {
    "bert": FastPath(_bert_finish, _bert_first),
    "roberta": FastPath(_bert_finish, _bert_first),
    "electra": FastPath(_bert_finish, _bert_first),
    "deberta-v2": FastPath(_bert_finish, None),  # disentangled attention: full last layer
    "distilbert": FastPath(_distil_finish, _distil_first),
    "mpnet": FastPath(_mpnet_finish, _mpnet_first),
    **{mt: FastPath(_llama_finish, None) for mt in ("llama", "qwen2", "mistral", "gemma")},
    "gpt2": FastPath(_gpt2_finish, None),
}
