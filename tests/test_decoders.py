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
