"""Functional change per head (1 − linear CKA of the head's output under θ0 and θ1) against a
naive reference: each example alone through each model, the head's output slice of O's input
captured by a hook, CKA computed in numpy float64 from the stacked tokens with explicit centring.
And what CKA is for: a rotation of a head's values undone in O leaves the model and func_change as
they were while U moves."""

import copy

import numpy as np
import pytest
import torch

from headplast.arch import get_adapter
from headplast.measure.funcchange import func_change, function_sums
from headplast.measure.update import qkvo_weights, update_magnitude
from test_effect import model_pair
from tiers import slow_except
from tiny import ALL_ARCHS, tiny_model


def _head_outputs(model, ad, enc):
    """({(l, h): [tokens, d]}, {(l, h): [tokens, keys]} per example) float64, one example at a time
    (no padding at all), the patterns from a copy of the model in eager attention."""
    L, H, d = ad.num_layers(model.config), ad.num_heads(model.config), ad.head_dim(model.config)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    out = {(l, h): [] for l in range(L) for h in range(H)}
    pats = {(l, h): [] for l in range(L) for h in range(H)}
    for feats in enc.features:
        batch = {k: torch.tensor([v]) for k, v in feats.items() if k != "labels"}
        grabbed = {}
        hooks = [ad.linear(eager, l, "o").register_forward_pre_hook(
            lambda m, a, l=l: grabbed.__setitem__(l, a[0][0].detach().double().numpy())) for l in range(L)]
        with torch.no_grad():
            att = eager(**batch, output_attentions=True).attentions
        for hk in hooks:
            hk.remove()
        for l in range(L):
            for h in range(H):
                out[(l, h)].append(grabbed[l][:, h * d:(h + 1) * d])
                pats[(l, h)].append(att[l][0, h].double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}, pats


def _jsd(p, q):
    m = (p + q) / 2
    kl = lambda a: np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / m), 0).sum(-1)  # noqa: E731
    return (kl(p) + kl(q)) / 2


def _cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("arch", slow_except(ALL_ARCHS, "bert", "deberta-v2"))
@pytest.mark.parametrize("theta1", ["trained", "lora"])
def test_func_change_equals_cka_of_captured_head_outputs(arch, theta1, enc_small, tok):
    m0, m1, ad = model_pair(arch, theta1)
    impl = m0.config._attn_implementation
    (fc, jsd), halves = func_change(function_sums(m0, m1, ad, enc_small, tok.pad_token_id, batch_size=4, folds=4),
                                    splits=6)
    assert m0.config._attn_implementation == impl and m1.config._attn_implementation  # restored
    (x0, a0), (x1, a1) = _head_outputs(m0, ad, enc_small), _head_outputs(m1, ad, enc_small)
    ref = np.array([[1 - _cka(x0[(l, h)], x1[(l, h)]) for h in range(4)] for l in range(2)])
    ref_jsd = np.array([[np.concatenate([_jsd(p, q) for p, q in zip(a0[(l, h)], a1[(l, h)])]).mean()
                         for h in range(4)] for l in range(2)])
    assert ref.max() > 1e-3 and ref_jsd.max() > 1e-4, "the update should change what heads compute"
    np.testing.assert_allclose(fc, ref, atol=1e-8)
    np.testing.assert_allclose(jsd, ref_jsd, atol=1e-6)
    assert halves.shape == (2, 6, 2, 8) and np.isfinite(halves).all() and (halves >= -1e-12).all()


def test_a_rotation_undone_in_o_changes_u_but_not_func_change(enc_small, tok):
    """Values rotated by an orthogonal R and O's columns by Rᵀ: the model computes the same thing,
    U counts the rotation, func_change does not (linear CKA is invariant to rotations)."""
    m0 = tiny_model("bert", init=0.3).eval()
    m1 = copy.deepcopy(m0)
    ad = get_adapter(m0)
    d = ad.head_dim(m0.config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for l in range(2):
            for h in range(4):
                R = torch.linalg.qr(torch.randn(d, d, generator=g)).Q
                s = ad.head_slice(m0.config, h)
                v, o = ad.linear(m1, l, "v"), ad.linear(m1, l, "o")
                v.weight[s] = R @ v.weight[s]
                v.bias[s] = R @ v.bias[s]
                o.weight[:, s] = o.weight[:, s] @ R.T
    batch = {k: torch.tensor([v]) for k, v in enc_small.features[0].items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(m1(**batch).logits, m0(**batch).logits, atol=1e-5, rtol=1e-5)
    U = update_magnitude(qkvo_weights(m0, ad), qkvo_weights(m1, ad), ad, m0.config).U
    (fc, jsd), _ = func_change(function_sums(m0, m1, ad, enc_small, tok.pad_token_id, batch_size=4, folds=2),
                               splits=2)
    # the patterns are the same up to fp32 rounding of the rotated layer's output
    assert U.min() > 0.1 and np.abs(fc).max() < 1e-9 and np.abs(jsd).max() < 1e-7


def test_identical_models_have_no_func_change(enc_small, tok):
    m0 = tiny_model("roberta", init=0.3).eval()
    total, halves = func_change(function_sums(m0, copy.deepcopy(m0), get_adapter(m0), enc_small, tok.pad_token_id,
                                              batch_size=4, folds=4), splits=4)
    assert np.abs(total).max() < 1e-12 and np.abs(halves).max() < 1e-12


def test_sliced_batches_few_folds_and_a_family_without_patterns(enc_small, tok, monkeypatch):
    """Batches cut to a small attention budget give the same sums; fewer batches than folds use
    as many folds as batches; a model that returns no attention weights is refused by name."""
    from headplast.errors import HeadplastError

    m0, m1, ad = model_pair("bert", "trained")
    whole = function_sums(m0, m1, ad, enc_small, tok.pad_token_id, batch_size=4, folds=3)
    sliced = function_sums(m0, m1, ad, enc_small, tok.pad_token_id, batch_size=4, folds=3, max_entries=1)
    for a, b in zip(whole, sliced):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    few = function_sums(m0, m1, ad, enc_small, tok.pad_token_id, batch_size=8, folds=10)  # 11 examples: 2 batches
    assert few[0].shape[0] == 2
    _, halves = func_change(few, splits=3)
    assert halves.shape == (2, 3, 2, 8)
    monkeypatch.setattr(type(m0), "forward", lambda self, **kw: type("Out", (), {"attentions": None})())
    with pytest.raises(HeadplastError, match="returned no attention weights"):
        function_sums(m0, m1, ad, enc_small, tok.pad_token_id, batch_size=4)
