"""Decoder families: what sets them apart from the encoders, each checked against transformers itself."""

import pytest
import torch

from headplast.arch import get_adapter
from headplast.arch.loading import load_tokenizer
from headplast.data.tokenize import collate
from headplast.errors import HeadplastError
from headplast.train.theta0 import first_token_features
from tiny import DECODERS, tiny_model, tiny_model_dir, tiny_tokenizer


@pytest.mark.parametrize("arch", DECODERS)
def test_the_probe_reads_what_the_classifier_reads(arch, enc_small, tok):
    """theta0's probe is fitted on these features: the task head on them gives transformers' logits
    (the last non-padding token after the final norm), on batches of mixed lengths."""
    model = tiny_model(arch, init=0.3)
    ad = get_adapter(model)
    feats = first_token_features(model, ad, enc_small, tok.pad_token_id, batch_size=4)  # [N, D]
    with torch.no_grad():
        ref = model(**collate(enc_small.features, tok.pad_token_id)).logits
        got = ad.head_fn(model, feats[:, None])
    assert torch.allclose(got, ref, atol=1e-5)
    assert len(set(enc_small.lengths().tolist())) > 5  # padding was there to skip


def test_the_sliding_window_of_the_test_model_is_shorter_than_the_examples(enc_small, tok):
    """mistral's tiny model attends within 8 tokens: the exactness tests see a window that matters."""
    m = tiny_model("mistral", init=0.3)
    full = tiny_model("mistral", init=0.3)
    full.config.sliding_window = None
    b = collate(enc_small.features[:3], tok.pad_token_id)
    with torch.no_grad():
        assert (m(**b).logits - full(**b).logits).abs().max() > 1e-3


def test_a_tokenizer_without_pad_pads_with_eos_on_the_right(tmp_path):
    tiny_model_dir("llama", tmp_path / "m")
    t = load_tokenizer(str(tmp_path / "m"))
    assert t.pad_token == t.eos_token == "[MASK]" and t.padding_side == "right"
    bare = tiny_tokenizer(tmp_path / "t")
    bare.pad_token, bare.eos_token = None, None
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(HeadplastError, match="neither a pad nor an EOS"):
        load_tokenizer(str(tmp_path / "bare"))


def test_grouped_query_heads_share_their_groups_kv_rows():
    model = tiny_model("llama")
    ad, cfg = get_adapter(model), model.config
    assert (ad.num_heads(cfg), ad.num_kv_heads(cfg), ad.group_size(cfg)) == (4, 2, 2)
    w = ad.linear(model, 0, "k").weight
    assert torch.equal(ad.head_weight(w, cfg, "k", 2), ad.head_weight(w, cfg, "k", 3))
    assert torch.equal(ad.head_weight(w, cfg, "k", 3), w[8:16])
    # squared norms per query head: a 1/2 share of the group's, so they add up to the matrix's
    sq = ad.head_sq(w, cfg, "k")
    assert torch.allclose(sq.sum(), w.pow(2).sum()) and torch.allclose(sq[2], w[8:16].pow(2).sum() / 2)
    gemma = tiny_model("gemma")
    assert get_adapter(gemma).head_dim(gemma.config) == 16 != 32 // 4  # head_dim from the config


def test_batches_padded_with_another_id_than_the_configs_are_refused(enc_small, tok, rte):
    """The classifier would read the wrong token: refused before any work, naming the fix."""
    from headplast.measure.ablation import ablation_importance

    model = tiny_model("llama")
    model.config.pad_token_id = 4
    with pytest.raises(HeadplastError, match="pad_token_id=4"):
        ablation_importance(model, get_adapter(model), enc_small, rte[0], tok.pad_token_id, progress=False)


@pytest.mark.parametrize("arch", DECODERS)
def test_the_engines_last_layer_computes_only_the_read_token(arch, enc_small, tok, rte):
    """The fast path runs the last layer's query, O and FFN for each example's last real token only,
    and gives what the full layer gives there (mixed lengths; mistral's window is shorter than them)."""
    from headplast.measure.ablation import ablation_importance
    from headplast.arch.adapters import gather_rows
    from headplast.measure.fastpath import FAST_PATHS, additive_mask
    from headplast.measure.replay import Replay

    model = tiny_model(arch, init=0.3)
    ad, fast = get_adapter(model), FAST_PATHS[arch]
    batch = collate(enc_small.features[:5], tok.pad_token_id)
    batch.pop("labels", None)
    with torch.no_grad():
        rp = Replay(model, ad, batch)
        last = rp.L - 1
        h = rp.input_of(last, 1)  # [B, T, D]
        full = rp.layer(last, h, 1)  # [B, T, D]
        ctx = fast.read_context(rp.layers[last], h, additive_mask(rp.mask, h.dtype), rp._arguments_call(last, 1),
                                rp.pos)
        one = fast.finish(rp.layers[last], ctx, gather_rows(h, rp.pos))  # [B, 1, D]
    assert len(set(rp.pos.tolist())) > 1
    torch.testing.assert_close(one, gather_rows(full, rp.pos), atol=1e-5, rtol=0)
    torch.testing.assert_close(ad.read_token_logits(model, one), rp.logits, atol=1e-5, rtol=0)

    seen = []
    mlp = rp.layers[last].mlp
    hd = mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    try:
        ablation_importance(model, ad, enc_small, rte[0], tok.pad_token_id, batch_size=4, progress=False)
    finally:
        hd.remove()
    # the recorded pass of each batch runs every token; every replay, the read token alone
    assert seen.count(1) > 0 and len([t for t in seen if t > 1]) == -(-len(enc_small) // 4)


def test_qwen2_sliding_window_on_some_layers_only(enc_small, tok, rte):
    """Qwen2 with use_sliding_window and max_window_layers = 1: layer 0 attends in full, layer 1 (the
    last, which the engine computes for the read token only) within 8 tokens; engine = naive loop."""
    import numpy as np
    import transformers as tf

    from headplast.measure.ablation import ablation_importance
    from headplast.measure.naive import naive_importance
    from tiny import tiny_config

    base = tiny_config("qwen2", init=0.3).to_dict()
    cfg = tf.Qwen2Config(**{**base, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1,
                            "layer_types": None})
    assert cfg.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = tf.Qwen2ForSequenceClassification(cfg).eval()
    full = tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**{**base, "layer_types": None})).eval()
    full.load_state_dict(model.state_dict())
    b = collate(enc_small.features[:3], tok.pad_token_id)
    with torch.no_grad():
        assert (model(**b).logits - full(**b).logits).abs().max() > 1e-3  # the window matters
    ad = get_adapter(model)
    fast = ablation_importance(model, ad, enc_small, rte[0], tok.pad_token_id, batch_size=4, max_tokens=100,
                               progress=False)
    ref = naive_importance(model, ad, enc_small, rte[0], tok.pad_token_id, batch_size=3)
    np.testing.assert_allclose(fast.losses, ref.losses, atol=1e-5, rtol=0)


def test_the_read_token_path_is_off_where_it_was_not_measured(enc_small, tok):
    """bf16 (its eager attention would differ from the model's fused kernel by a rounding every head
    shares) and GPUs (unmeasured) run the last layer through the model's own modules, decoders and
    encoders alike."""
    from headplast.measure import replay

    model = tiny_model("llama", init=0.3)
    b = collate(enc_small.features[:2], tok.pad_token_id)
    b.pop("labels", None)
    with torch.no_grad():
        assert replay.Replay(model, get_adapter(model), b).read_token_only()
        assert not replay.Replay(model.to(torch.bfloat16), get_adapter(model), b).read_token_only()
        enc = tiny_model("bert", init=0.3)
        assert replay.Replay(enc, get_adapter(enc), b).read_token_only()
        assert not replay.Replay(enc.to(torch.bfloat16), get_adapter(enc), b).read_token_only()
