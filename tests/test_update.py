import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headplast.arch import get_adapter
from headplast.measure.update import merged_peft_model, qkvo_weights, update_magnitude
from headplast.train.lora import make_lora_model, resolve_targets
from tiny import ALL_ARCHS, ARCHS, head_sq, tiny_model, tiny_model_dir


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["q", "k", "v", "o"])
def test_changing_one_head_changes_only_its_u(arch, kind):
    m0 = tiny_model(arch)
    ad = get_adapter(m0)
    w0 = qkvo_weights(m0, ad)
    w1 = {k: v.clone() for k, v in w0.items()}
    s = ad.head_slice(m0.config, 2)
    if kind == "o":
        w1[(1, kind)][:, s] += 0.5  # head 2 owns these columns of O
    else:
        w1[(1, kind)][s, :] += 0.5  # and these rows of Q/K/V
    res = update_magnitude(w0, w1, ad, m0.config)
    expected = np.zeros((2, 4))
    expected[1, 2] = 0.5 * np.sqrt(8 * 32)
    np.testing.assert_allclose(res.U, expected, atol=1e-6)
    np.testing.assert_allclose(getattr(res, f"U_{kind}"), expected, atol=1e-6)
    assert res.Urel[1, 2] > 0 and res.Urel[0].max() == 0
    # W0 (Urel's denominator, a covariate of the statistics): rows of Q/K/V and columns of O, sliced here
    W0 = np.array([[np.sqrt(sum(float(w0[(l, k)][ad.head_slice(m0.config, h), :].pow(2).sum()) for k in "qkv")
                            + float(w0[(l, "o")][:, ad.head_slice(m0.config, h)].pow(2).sum())) for h in range(4)]
                   for l in range(2)])
    np.testing.assert_allclose(res.W0, W0, rtol=1e-6)
    np.testing.assert_allclose(res.Urel[1, 2], res.U[1, 2] / W0[1, 2], rtol=1e-6)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_lora_update_equals_merge_and_by_hand(arch, tmp_path):
    d = tiny_model_dir(arch, tmp_path / "theta0")
    from headplast.arch.loading import load_model

    base = load_model(str(d))
    ad = get_adapter(base)
    peft_model = make_lora_model(base, ad, r=4, alpha=8, dropout=0.0, targets=resolve_targets(ad, base))
    torch.manual_seed(1)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:  # B starts at zero: give the adapter a real update
            torch.nn.init.normal_(p, std=0.2)
    peft_model.save_pretrained(tmp_path / "adapter")

    theta0 = load_model(str(d))
    res = update_magnitude(qkvo_weights(theta0, ad), qkvo_weights(merged_peft_model(str(d), str(tmp_path / "adapter")),
                                                                   ad), ad, theta0.config)
    # independent reference: delta W = (alpha / r) B A from the saved adapter tensors
    sd = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    ref = np.zeros((2, 4))
    for l in range(2):
        for k in "qkvo":
            name = ad.module_name(l, k)
            A = sd[f"base_model.model.{name}.lora_A.weight"]
            B = sd[f"base_model.model.{name}.lora_B.weight"]
            dw = (8 / 4) * B @ A  # [out, in]; GPT-2's Conv1D stores the transpose (fan_in_fan_out)
            dw = dw.T if arch == "gpt2" else dw
            for h in range(4):
                ref[l, h] += head_sq(dw, theta0.config, k, h)
    np.testing.assert_allclose(res.U, np.sqrt(ref), rtol=1e-5)
    assert res.U.min() > 0


def test_other_mergeable_peft_methods_work_the_same_way(tmp_path):
    """LoHa (like LoRA, DoRA, LoKr) merges: U must equal the per-layer delta peft itself reports."""
    from peft import LoHaConfig, get_peft_model

    from headplast.arch.loading import load_model

    d = tiny_model_dir("bert", tmp_path / "theta0")
    base = load_model(str(d))
    ad = get_adapter(base)
    targets = resolve_targets(ad, base)
    pm = get_peft_model(base, LoHaConfig(r=2, alpha=4, target_modules=targets, init_weights=False))
    deltas = {name: pm.base_model.model.get_submodule(name).get_delta_weight("default").detach().clone()
              for name in targets}
    pm.save_pretrained(tmp_path / "adapter")
    theta0 = load_model(str(d))
    res = update_magnitude(qkvo_weights(theta0, ad),
                           qkvo_weights(merged_peft_model(str(d), str(tmp_path / "adapter")), ad), ad, theta0.config)
    ref = np.zeros((2, 4))
    for l in range(2):
        for k in "qkvo":
            for h in range(4):
                ref[l, h] += ad.head_weight(deltas[ad.module_name(l, k)], theta0.config, k, h).pow(2).sum().item()
    np.testing.assert_allclose(res.U, np.sqrt(ref), rtol=1e-5)
    assert res.U.min() > 0
