"""Update effect per head against a naive reference: copy the model, set the head's Q/K/V rows
(weights and biases) and O columns from the other model, one full forward pass per head."""

import copy

import numpy as np
import pytest
import torch

from headplast.arch import get_adapter
from headplast.measure.ablation import example_losses
from headplast.measure.effect import update_effect
from tiers import slow_except
from tiny import ALL_ARCHS, expand_kv, tiny_model


def _trained_like(model, seed: int, scale: float = 0.05):
    """theta1: every parameter moved (FFN, LayerNorms and task head too, which must not be patched)."""
    g = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m.eval()


def _lora_merged(model, seed: int):
    """theta1 = theta0 + a LoRA adapter on Q/K/V/O with random B, merged by peft (fp32)."""
    from peft import LoraConfig, get_peft_model

    ad = get_adapter(model)
    names = [ad.module_name(l, k) for l in range(ad.num_layers(model.config)) for k in ("q", "k", "v", "o")]
    torch.manual_seed(seed)
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=names))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return pm.merge_and_unload().eval()


def model_pair(arch: str, theta1: str):
    """(theta0, theta1, adapter) of a tiny model: theta1 'trained' (every parameter moved) or 'lora'
    (a merged LoRA adapter on Q/K/V/O)."""
    m0 = tiny_model(arch, init=0.3).eval()
    m1 = _trained_like(m0, 1) if theta1 == "trained" else _lora_merged(m0, 1)
    return m0, m1, get_adapter(m0)


def _naive_losses(model, other, ad, enc, task, pad_id):
    """[N, 1 + L*H]: the model's own losses, then one full forward pass per patched head. Grouped-query
    attention: in the same models with one K/V copy per query head (weights edited), so that head h's
    K/V rows are its own and its group's other heads keep theirs."""
    L, H = ad.num_layers(model.config), ad.num_heads(model.config)
    if ad.group_size(model.config) > 1:
        model, other = expand_kv(model), expand_kv(other)
    from headplast.data.tokenize import sorted_batches

    out = np.zeros((len(enc), 1 + L * H))
    for idx, batch in sorted_batches(enc, 3, pad_id):
        labels = batch.pop("labels")
        with torch.no_grad():
            out[idx, 0] = example_losses(model(**batch).logits, labels, False).numpy()
            for l in range(L):
                for h in range(H):
                    m = copy.deepcopy(model)
                    s = ad.head_slice(m.config, h)
                    for kind in ("q", "k", "v"):  # [out, in] views (GPT-2's Conv1D: of the transposed thirds)
                        ad.weight(m, l, kind)[s] = ad.weight(other, l, kind)[s]
                        if (mine := ad.bias(m, l, kind)) is not None:
                            mine[s] = ad.bias(other, l, kind)[s]
                    ad.weight(m, l, "o")[:, s] = ad.weight(other, l, "o")[:, s]
                    out[idx, 1 + l * H + h] = example_losses(m(**batch).logits, labels, False).numpy()
    return out


@pytest.mark.parametrize("arch", slow_except(ALL_ARCHS, "bert"))
@pytest.mark.parametrize("theta1", ["trained", "lora"])
def test_update_effect_equals_naive_patching(arch, theta1, enc_small, tok, rte):
    task, _ = rte
    m0, m1, ad = model_pair(arch, theta1)
    # small batches and a small token budget: several batches of mixed lengths, heads split over passes
    res = update_effect(m0, m1, ad, enc_small, task, tok.pad_token_id, batch_size=4, max_tokens=100,
                        progress=False)
    fwd = _naive_losses(m0, m1, ad, enc_small, task, tok.pad_token_id)
    rev = _naive_losses(m1, m0, ad, enc_small, task, tok.pad_token_id)
    L, H = 2, 4
    effect_fwd = (fwd[:, :1] - fwd[:, 1:]).mean(0).reshape(L, H)
    effect_rev = (rev[:, 1:] - rev[:, :1]).mean(0).reshape(L, H)
    assert np.abs(effect_fwd).max() > 1e-3 and np.abs(effect_rev).max() > 1e-3, "updates should matter"
    np.testing.assert_allclose(res.effect_fwd, effect_fwd, atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.effect_rev, effect_rev, atol=1e-5, rtol=0)
    np.testing.assert_allclose(-res.fwd_values, fwd, atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.rev_values, rev, atol=1e-5, rtol=0)
    diff = rev[:, 1:] - rev[:, :1]
    np.testing.assert_allclose(res.effect_rev_se.ravel(), diff.std(0, ddof=1) / np.sqrt(len(diff)), atol=1e-6)
    # the models are left as they were
    for p0, p in zip(tiny_model(arch, init=0.3).state_dict().values(), m0.state_dict().values()):
        assert torch.equal(p0, p)


def test_identical_models_have_zero_effect(enc_small, tok, rte):
    task, _ = rte
    m0 = tiny_model("bert", init=0.3).eval()
    res = update_effect(m0, copy.deepcopy(m0), get_adapter(m0), enc_small, task, tok.pad_token_id, 4,
                        progress=False)
    assert np.abs(res.effect_fwd).max() < 1e-6 and np.abs(res.effect_rev).max() < 1e-6
    assert len(res.rows()) == 8 and set(res.rows()[0]) == {"layer", "head", "effect_fwd", "effect_fwd_se",
                                                           "effect_rev", "effect_rev_se"}


@pytest.mark.parametrize("arch", slow_except(("llama", "gemma", "bert"), "llama"))
def test_the_group_effect_equals_patching_the_whole_groups_weights(arch, enc_small, tok, rte):
    """--kv-group-effect: every Q/K/V row and O column of a K/V group's heads from the other model at
    once, against a deep copy with those weights set (a weight patch, no hook); llama 2 groups of 2,
    gemma 1 group of 4 (one K/V head), bert groups of 1 (= the update effect)."""
    from headplast.measure.effect import group_effect

    task, _ = rte
    m0, m1, ad = model_pair(arch, "trained")
    res = group_effect(m0, m1, ad, enc_small, task, tok.pad_token_id, batch_size=4, max_tokens=100, progress=False)
    cfg = m0.config
    L, H, G = ad.num_layers(cfg), ad.num_heads(cfg), ad.group_size(cfg)
    assert G == {"llama": 2, "gemma": 4, "bert": 1}[arch]
    from headplast.data.tokenize import sorted_batches

    def naive(model, other):
        out = np.zeros((len(enc_small), 1 + L * (H // G)))
        for idx, batch in sorted_batches(enc_small, 3, tok.pad_token_id):
            labels = batch.pop("labels")
            with torch.no_grad():
                out[idx, 0] = example_losses(model(**batch).logits, labels, False).numpy()
                for l in range(L):
                    for g in range(H // G):
                        m = copy.deepcopy(model)
                        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
                        rows = {"q": slice(g * G * d, (g + 1) * G * d),  # the group's query heads
                                "k": slice(g * d, (g + 1) * d), "v": slice(g * d, (g + 1) * d)}
                        for kind, s in rows.items():
                            ad.weight(m, l, kind)[s] = ad.weight(other, l, kind)[s]
                            if (b := ad.bias(m, l, kind)) is not None:
                                b[s] = ad.bias(other, l, kind)[s]
                        ad.weight(m, l, "o")[:, rows["q"]] = ad.weight(other, l, "o")[:, rows["q"]]
                        out[idx, 1 + l * (H // G) + g] = example_losses(m(**batch).logits, labels, False).numpy()
        return out
    fwd, rev = naive(m0, m1), naive(m1, m0)
    f = np.repeat((fwd[:, :1] - fwd[:, 1:]).mean(0).reshape(L, H // G), G, axis=1)
    r = np.repeat((rev[:, 1:] - rev[:, :1]).mean(0).reshape(L, H // G), G, axis=1)
    assert np.abs(f).max() > 1e-3
    np.testing.assert_allclose(res.group_effect_fwd, f, atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.group_effect_rev, r, atol=1e-5, rtol=0)
    if G == 1:  # groups of one head: the update effect itself
        eff = update_effect(m0, m1, ad, enc_small, task, tok.pad_token_id, batch_size=4, max_tokens=100,
                            progress=False)
        np.testing.assert_allclose(res.group_effect_fwd, eff.effect_fwd, atol=1e-9, rtol=0)
