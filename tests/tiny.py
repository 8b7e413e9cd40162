"""Tiny random models of every supported architecture, built from configs (no hub)."""

from __future__ import annotations

import string
from pathlib import Path

import torch
import transformers as tf

ARCHS = ("bert", "roberta", "electra", "deberta-v2", "distilbert", "mpnet")
# DeBERTa as released: v3 shares the position projections with Q/K (share_att_key); v2-xlarge
# and -xxlarge also mix the embeddings into layer 0's output with a conv layer
VARIANTS = ("deberta-v2:shared", "deberta-v2:conv")
# decoders, each with what sets it apart: grouped-query attention (llama, qwen2, mistral; gemma:
# one K/V head), Q/K/V biases (qwen2), a sliding window shorter than the examples (mistral),
# head_dim != hidden / heads (gemma)
DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gemma")  # gpt2: fused Q/K/V in a Conv1D ([in, out])
ALL_ARCHS = ARCHS + VARIANTS + DECODERS


def tiny_tokenizer(path: Path):
    """A character-level WordPiece tokenizer: every text maps to known tokens."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = tf.BertTokenizer(vocab=str(path / "vocab.txt"), do_lower_case=True)  # transformers 5: `vocab`
    return tok


def tiny_config(arch: str, num_labels: int = 2, layers: int = 2, heads: int = 4, hidden: int = 32,
                init: float = 0.02):
    """init: weight init scale; larger values make heads matter more (non-trivial importance).
    arch may name a variant: 'deberta-v2:shared' or 'deberta-v2:conv' (see VARIANTS)."""
    arch, _, variant = arch.partition(":")
    common = dict(vocab_size=200, num_labels=num_labels, pad_token_id=0, max_position_embeddings=300,
                  initializer_range=init)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=300, n_inner=2 * hidden,
                             **common)
    if arch in DECODERS:
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig,
               "gemma": tf.GemmaConfig}[arch]
        kw = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=1 if arch == "gemma" else heads // 2, intermediate_size=2 * hidden,
                  head_dim=2 * hidden // heads if arch == "gemma" else hidden // heads, tie_word_embeddings=False,
                  **common)
        if arch == "mistral":
            kw["sliding_window"] = 8
        if arch == "llama":
            kw["attention_bias"] = False
        return cls(**kw)
    if arch == "distilbert":
        return tf.DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=2 * hidden, **common)
    cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "electra": tf.ElectraConfig,
           "deberta-v2": tf.DebertaV2Config, "mpnet": tf.MPNetConfig}[arch]
    kw = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              intermediate_size=2 * hidden, **common)
    if arch == "electra":
        kw["embedding_size"] = hidden
    if arch == "deberta-v2":
        kw.update(relative_attention=True, position_buckets=16, max_relative_positions=64,
                  pos_att_type=["p2c", "c2p"], type_vocab_size=0, position_biased_input=False)
        if variant in ("shared", "conv"):
            kw.update(share_att_key=True, norm_rel_ebd="layer_norm")
        if variant == "conv":
            kw.update(conv_kernel_size=3, conv_act="gelu")
    if arch in ("bert", "roberta", "electra"):
        kw["type_vocab_size"] = 2
    return cls(**kw)


def head_sq(w: torch.Tensor, config, kind: str, h: int) -> float:
    """Head h's squared norm in a Q/K/V/O weight [out, in], written out by hand (not through the
    adapter): rows h*d:(h+1)*d of Q, columns of O; K/V under grouped-query attention: the rows of
    h's group g = h // (H / n_kv), weighted 1/group size (so the query heads' squares add up)."""
    H = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or H
    d = getattr(config, "head_dim", None) or config.hidden_size // H
    if config.model_type == "gpt2":  # w is the Conv1D's [in, out]; Q, K, V: thirds of c_attn's output
        w = w.T
        if kind != "o" and w.shape[0] == 3 * H * d:
            i = "qkv".index(kind)
            w = w[i * H * d:(i + 1) * H * d]
    g, share = (h // (H // kv), kv / H) if kind in ("k", "v") else (h, 1.0)
    part = w[:, g * d:(g + 1) * d] if kind == "o" else w[g * d:(g + 1) * d]
    return share * float(part.double().pow(2).sum())


def expand_kv(model):
    """The same function without grouped-query attention: every query head gets its own copy of
    its group's K/V rows (num_key_value_heads = heads). A reference built by editing weights."""
    import copy

    cfg = copy.deepcopy(model.config)
    H, G = cfg.num_attention_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    cfg.num_key_value_heads = H
    out = type(model)(cfg).eval()
    sd = {}
    for n, p in model.state_dict().items():
        if n.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            p = p.unflatten(0, (-1, d)).repeat_interleave(G, dim=0).flatten(0, 1)
        sd[n] = p
    out.load_state_dict(sd)
    return out


def tiny_model(arch: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = tf.AutoModelForSequenceClassification.from_config(tiny_config(arch, **kw))
    model.eval()
    return model


def tiny_model_dir(arch: str, path: Path, seed: int = 0, **kw) -> Path:
    """A local model directory (weights + tokenizer) usable as --model."""
    path = Path(path)
    tok = tiny_tokenizer(path / "_tok")
    model = tiny_model(arch, seed, **kw)
    if arch.split(":")[0] in DECODERS:  # as GPT-2's and Llama's: no pad token, an EOS that texts never contain
        tok.pad_token, tok.eos_token = None, "[MASK]"
        model.config.pad_token_id = None
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_run_kwargs(model_dir, root) -> dict:
    """TrainConfig fields of a tiny run that trains in about a second (RTE, 32 examples, 1 epoch)."""
    return dict(task="RTE", model=str(model_dir), output_root=str(root), max_train_samples=32, num_epochs=1,
                batch_size=8, probe_epochs=10, eval_size=12, max_length=40, learning_rate=5e-3)
