"""Per-family pieces of a layer, so the ablation engine can skip work that cannot change.

Ablating a head of layer l changes nothing before O of layer l: the engine restarts from
the recorded input of O (`finish`). In sequence classification the task head reads one
token of the last layer (token 0 for encoders, each example's last real token for decoders),
so that layer needs keys and values for every token but queries, O and the FFN only for the
read token (`read_context`).
A family without an entry here falls back to full layer calls (still exact).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch.nn import functional as F

from headplast.arch.adapters import gather_rows


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


def read_row_mask(add_mask: torch.Tensor, pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """The causal (and sliding-window) mask row of the query at pos [B] on top of the padding
    mask [B,1,1,T]: key j is seen iff j <= pos and (no window or j > pos - window), as
    transformers' masking_utils builds it."""
    j = torch.arange(add_mask.shape[-1], device=add_mask.device)[None]  # [1, T]
    hidden = j > pos[:, None]
    if window is not None:
        hidden = hidden | (j <= pos[:, None] - window)
    return add_mask.masked_fill(hidden[:, None, None, :], torch.finfo(add_mask.dtype).min)


def _attend_read(q, k, v, add_mask, scaling):
    """One query row per example. q [B,H,1,d], k/v [B,Hkv,T,d] (query head h reads K/V head
    h // G), add_mask [B,1,1,T] -> [B,1,H*d]. Softmax in fp32 at least (as transformers' eager
    path for bf16/fp16; fp64 models keep fp64)."""
    B, H, _, d = q.shape
    Hkv = k.shape[1]
    q = q.reshape(B, Hkv, H // Hkv, d)  # a group's G query rows against its one K/V head: no K/V copies
    s = torch.matmul(q, k.transpose(-1, -2)) * scaling + add_mask  # [B, Hkv, G, T]
    p = F.softmax(s, dim=-1, dtype=torch.promote_types(s.dtype, torch.float32)).to(q.dtype)
    return torch.matmul(p, v).reshape(B, 1, H * d)  # [B, Hkv, G, d] -> heads h = g * G + i


@dataclass(frozen=True)
class FastPath:
    finish: Callable  # (layer, ctx [B,T,D] = input of O, h_in [B,T,D]) -> layer output
    # (layer, h [B,T,D], add_mask [B,1,1,T], call, pos [B]) -> input of O at the read token [B,1,D]
    read_context: Callable | None


# --- BERT, RoBERTa, ELECTRA (and DeBERTa's post-attention part) ------------------------
def _bert_finish(layer, ctx, h_in):
    a = layer.attention.output(ctx, h_in)  # O (gated by hooks) + dropout + LayerNorm(residual)
    return layer.output(layer.intermediate(a), a)


def _bert_first(layer, h, add_mask, call, pos):  # encoders read token 0
    sa = layer.attention.self
    return _attend(sa.query(h[:, :1]), sa.key(h), sa.value(h), add_mask, sa.num_attention_heads)


# --- DistilBERT ---------------------------------------------------------------------------
def _distil_finish(layer, ctx, h_in):
    a = layer.sa_layer_norm(layer.attention.out_lin(ctx) + h_in)
    return layer.output_layer_norm(layer.ffn(a) + a)


def _distil_first(layer, h, add_mask, call, pos):  # encoders read token 0
    at = layer.attention
    return _attend(at.q_lin(h[:, :1]), at.k_lin(h), at.v_lin(h), add_mask, at.n_heads)


# --- MPNet (relative position bias computed once by the encoder) --------------------------
def _mpnet_finish(layer, ctx, h_in):
    a = layer.attention.LayerNorm(layer.attention.dropout(layer.attention.attn.o(ctx)) + h_in)
    return layer.output(layer.intermediate(a), a)


def _mpnet_first(layer, h, add_mask, call, pos):  # encoders read token 0
    args, kwargs = call
    bias = args[2] if len(args) > 2 else kwargs.get("position_bias")
    at = layer.attention.attn
    bias = None if bias is None else bias[..., :1, :]
    return _attend(at.q(h[:, :1]), at.k(h), at.v(h), add_mask, at.num_attention_heads, bias)


# --- Llama, Qwen2, Mistral, Gemma (pre-norm, rotary, grouped-query; the task head reads each
# example's last real token, pos) ----------------------------------------------------------------
def _llama_finish(layer, ctx, h_in):
    a = h_in + layer.self_attn.o_proj(ctx)
    return a + layer.mlp(layer.post_attention_layernorm(a))


def _llama_read(layer, h, add_mask, call, pos, config_window: bool = False):
    at = layer.self_attn
    for unsupported in ("q_norm", "k_norm", "attn_logit_softcapping"):  # families this path does not compute
        if getattr(at, unsupported, None) is not None or getattr(at.config, unsupported, None) is not None:
            raise NotImplementedError(f"{type(at).__name__} has {unsupported}: no read-token path for it")
    B, T, _ = h.shape
    d = at.head_dim
    x = layer.input_layernorm(h)  # [B, T, D]
    q = at.q_proj(gather_rows(x, pos)).view(B, 1, -1, d).transpose(1, 2)  # [B, H, 1, d]
    k = at.k_proj(x).view(B, T, -1, d).transpose(1, 2)  # [B, Hkv, T, d]
    v = at.v_proj(x).view(B, T, -1, d).transpose(1, 2)
    cos, sin = call[1]["position_embeddings"]  # [B or 1, T, d], as the model computed them
    cos, sin = cos.expand(B, -1, -1), sin.expand(B, -1, -1)
    rotary = sys.modules[type(at).__module__].apply_rotary_pos_emb  # the family's own rotation
    q, _ = rotary(q, q, gather_rows(cos, pos), gather_rows(sin, pos))
    _, k = rotary(k, k, cos, sin)
    # Qwen2 names a window per layer (None on full-attention layers); Mistral's config one for every
    # layer (other families' models ignore a stray config.sliding_window: so does this path)
    window = at.config.sliding_window if config_window else getattr(at, "sliding_window", None)
    return _attend_read(q, k, v, read_row_mask(add_mask, pos, window), at.scaling)


def _gpt2_finish(layer, ctx, h_in):
    a = h_in + layer.attn.resid_dropout(layer.attn.c_proj(ctx))
    return a + layer.mlp(layer.ln_2(a))


def _gpt2_read(layer, h, add_mask, call, pos):
    at = layer.attn
    B, T, _ = h.shape
    H, d = at.num_heads, at.head_dim
    q, k, v = at.c_attn(layer.ln_1(h)).split(at.split_size, dim=2)  # one fused module: [B, T, D] each
    q = gather_rows(q, pos).view(B, 1, H, d).transpose(1, 2)  # [B, H, 1, d]
    k, v = (t.view(B, T, H, d).transpose(1, 2) for t in (k, v))
    return _attend_read(q, k, v, read_row_mask(add_mask, pos, None), at.scaling)


FAST_PATHS = {
    "bert": FastPath(_bert_finish, _bert_first),
    "roberta": FastPath(_bert_finish, _bert_first),
    "electra": FastPath(_bert_finish, _bert_first),
    "deberta-v2": FastPath(_bert_finish, None),  # disentangled attention: full last layer
    "distilbert": FastPath(_distil_finish, _distil_first),
    "mpnet": FastPath(_mpnet_finish, _mpnet_first),
    **{mt: FastPath(_llama_finish, _llama_read) for mt in ("llama", "qwen2", "gemma")},
    "mistral": FastPath(_llama_finish, partial(_llama_read, config_window=True)),
    "gpt2": FastPath(_gpt2_finish, _gpt2_read),
}
