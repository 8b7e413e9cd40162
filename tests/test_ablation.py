import numpy as np
import pytest

from headplast.arch import get_adapter
from headplast.data import get_task
from headplast.data.loaders import Examples
from headplast.data.tokenize import encode
from headplast.measure.ablation import ablation_importance
from headplast.measure.naive import naive_importance
from tiers import slow_except
from tiny import ALL_ARCHS, tiny_model


@pytest.mark.parametrize("arch", slow_except(ALL_ARCHS, "bert"))
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_engine_equals_naive_reference(arch, ablation, enc_small, tok, rte):
    task, _ = rte
    model = tiny_model(arch, init=0.3)
    ad = get_adapter(model)
    # small batches and a small token budget: several batches of mixed lengths, heads split over passes
    fast = ablation_importance(model, ad, enc_small, task, tok.pad_token_id, batch_size=4, ablation=ablation,
                               max_tokens=100, progress=False)
    ref = naive_importance(model, ad, enc_small, task, tok.pad_token_id, batch_size=3, ablation=ablation)
    assert np.abs(ref.importance).max() > 1e-3, "tiny model should have heads that matter"
    np.testing.assert_allclose(fast.importance, ref.importance, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.losses, ref.losses, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.kl, ref.kl, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.metric_delta, ref.metric_delta, atol=1e-9)
    assert fast.losses.shape == (len(enc_small), 1 + 2 * 4)


def test_engine_without_fast_path_and_naive_padded_agree(enc_small, tok, rte):
    task, _ = rte
    model = tiny_model("roberta", init=0.3)
    ad = get_adapter(model)
    slow = ablation_importance(model, ad, enc_small, task, tok.pad_token_id, 5, use_fast_path=False,
                               progress=False)
    fast = ablation_importance(model, ad, enc_small, task, tok.pad_token_id, 5, progress=False)
    padded = naive_importance(model, ad, enc_small, task, tok.pad_token_id, batch_size=4, pad_to=64)
    np.testing.assert_allclose(slow.importance, fast.importance, atol=1e-6)
    np.testing.assert_allclose(padded.importance, fast.importance, atol=1e-5)


def test_importance_standard_error_is_paired_over_examples(enc_small, tok, rte):
    task, _ = rte
    model = tiny_model("bert", init=0.3)
    res = ablation_importance(model, get_adapter(model), enc_small, task, tok.pad_token_id, 4, progress=False)
    diff = res.losses[:, 1:] - res.losses[:, :1]
    np.testing.assert_allclose(res.importance_se.ravel(), diff.std(0, ddof=1) / np.sqrt(len(diff)), rtol=1e-5)
    assert len(res.rows()) == 8 and {"layer", "head", "importance", "kl"} <= set(res.rows()[0])


def test_regression_task_uses_squared_error(tok):
    task = get_task("stsb")
    ex = Examples((("a man is here", "a man is there"), ("dogs run", "cats sleep"), ("x y z", "x y")),
                  np.array([4.0, 0.5, 2.5], dtype=np.float32), "validation", "test")
    enc = encode(tok, ex, 32)
    model = tiny_model("bert", num_labels=1, init=0.3)
    ad = get_adapter(model)
    fast = ablation_importance(model, ad, enc, task, tok.pad_token_id, 2, progress=False)
    ref = naive_importance(model, ad, enc, task, tok.pad_token_id, 2)
    np.testing.assert_allclose(fast.importance, ref.importance, atol=1e-5)
    assert np.isnan(fast.kl).all()


@pytest.mark.parametrize("arch", slow_except(ALL_ARCHS, "bert"))
def test_batches_of_one_example(arch, enc_small, tok, rte):
    """A batch of one is ambiguous for 'per-example' arguments (DeBERTa's relative positions are
    [1, T, T] too): the engine must still repeat only what is per example."""
    task, _ = rte
    model = tiny_model(arch, init=0.3)
    ad = get_adapter(model)
    one = type(enc_small)(enc_small.features[:3], enc_small.labels[:3])
    fast = ablation_importance(model, ad, one, task, tok.pad_token_id, batch_size=1, max_tokens=10_000,
                               progress=False)
    ref = naive_importance(model, ad, one, task, tok.pad_token_id, batch_size=1)
    np.testing.assert_allclose(fast.losses, ref.losses, atol=1e-5, rtol=0)


def test_kl_is_never_negative():
    from headplast.measure.ablation import kl_base_to
    import torch

    logits = torch.randn(64, 3)
    assert (kl_base_to(logits, logits.clone()) == 0).all()
    assert (kl_base_to(logits, logits + 1e-7 * torch.randn(64, 3)) >= 0).all()


def test_resample_donors_are_a_fixed_derangement_and_align_by_position():
    import torch

    from headplast.measure.resample import align, derangement

    p = derangement(50)
    assert sorted(p.tolist()) == list(range(50)) and not (p == np.arange(50)).any()
    assert (derangement(50) == p).all()  # the same pairs in every run
    ctx = torch.arange(12.0).view(4, 3)  # donor: 3 real tokens, 1 padding row
    out = align(ctx, 3, 5)
    assert torch.equal(out[:3], ctx[:3]) and torch.equal(out[3], ctx[:3].mean(0)) and torch.equal(out[4], out[3])
    assert torch.equal(align(ctx, 3, 2), ctx[:2])
    # decoders: the last real tokens meet (receiver of 2 in a batch of 5: donor tokens 1, 2, then the mean)
    out = align(ctx, 3, 5, receiver_len=2)
    assert torch.equal(out[:2], ctx[1:3]) and torch.equal(out[2], ctx[:3].mean(0))
    out = align(ctx, 3, 5, receiver_len=4)  # a longer receiver: the mean first, then the donor's 3
    assert torch.equal(out[0], ctx[:3].mean(0)) and torch.equal(out[1:4], ctx[:3]) and out.shape == (5, 3)
