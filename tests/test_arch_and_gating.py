import pytest
import torch

from headplast.arch import get_adapter, supported_model_types
from headplast.data.tokenize import sorted_batches
from headplast.errors import HeadplastError
from headplast.measure.gating import head_gates
from tiny import ALL_ARCHS, tiny_model


def _batch(enc, tok, n=6):
    _, b = next(iter(sorted_batches(enc, n, tok.pad_token_id)))
    b.pop("labels")
    return b


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_adapter_locates_qkvo_and_task_head(arch, enc_small, tok):
    model = tiny_model(arch)
    ad = get_adapter(model)
    L, H, d = ad.num_layers(model.config), ad.num_heads(model.config), ad.head_dim(model.config)
    kv = ad.num_kv_heads(model.config)
    assert (L, H, d, kv) == (2, 4, 16 if arch == "gemma" else 8, {"gemma": 1, "gpt2": 4}.get(arch, 2 if ad.reads_last else 4))
    shapes = {"q": (H * d, 32), "k": (kv * d, 32), "v": (kv * d, 32), "o": (32, H * d)}
    for l in range(L):
        for k in "qkvo":
            lin = ad.linear(model, l, k)
            assert model.get_submodule(ad.module_name(l, k)) is lin
            assert ad.weight(model, l, k).shape == shapes[k]  # [out, in] whatever the storage
            if arch == "gpt2":  # Conv1D [in, out]; Q, K, V are thirds of c_attn's output
                i = "qkvo".index(k) % 3
                cols = slice(None) if k == "o" else slice(i * 32, (i + 1) * 32)
                assert torch.equal(ad.weight(model, l, k), lin.weight[:, cols].T)
                assert torch.equal(ad.bias(model, l, k), lin.bias[cols])
            else:
                assert isinstance(lin, torch.nn.Linear) and lin.weight.shape == shapes[k]
    for name in ad.head_modules:
        model.get_submodule(name)
    b = _batch(enc_small, tok)
    with torch.no_grad():
        hidden = getattr(model, ad.base)(**b).last_hidden_state
        if ad.reads_last:  # the model's last_hidden_state is after the final norm; layers' outputs are not
            hidden = ad.layer_output(_call(ad.layer_modules(model)[-1], _last_call(model, ad, b)))
        assert torch.allclose(ad.logits(model, hidden, b["input_ids"]), model(**b).logits, atol=1e-6)
        # the read position: the last token that is not padding (the examples have different lengths)
        pos = ad.read_positions(model, b["input_ids"])
        assert pos.tolist() == ((b["attention_mask"].sum(1) - 1) if ad.reads_last else 0 * pos).tolist()
        assert len(set(pos.tolist())) > 1 or not ad.reads_last


def _last_call(model, ad, b):
    from headplast.measure.replay import record_layer_inputs

    with record_layer_inputs(model, ad) as calls:
        model(**b, use_cache=False)
    args, kwargs = calls[-1]
    return args, kwargs


def _call(layer, call):
    return layer(*call[0], **call[1])


def test_unknown_model_type_lists_supported():
    with pytest.raises(HeadplastError) as e:
        get_adapter("gpt_neox")
    assert all(t in str(e.value) for t in supported_model_types()) and "register" in str(e.value)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_gates_at_one_reproduce_logits_exactly_and_unhook(arch, enc_small, tok):
    model = tiny_model(arch, init=0.3)
    ad = get_adapter(model)
    b = _batch(enc_small, tok)
    before = _hook_count(model)
    with torch.no_grad():
        ref = model(**b).logits
        with head_gates(model, ad, torch.ones(2, 4)):
            assert _hook_count(model) == before + 2
            gated = model(**b).logits
        with head_gates(model, ad, torch.ones(2, 4), means=torch.randn(2, 4 * ad.head_dim(model.config))):
            gated_mean = model(**b).logits
    assert torch.equal(ref, gated) and torch.equal(ref, gated_mean)
    assert _hook_count(model) == before
    with pytest.raises(RuntimeError), head_gates(model, ad, torch.zeros(2, 4)):
        raise RuntimeError("boom")
    assert _hook_count(model) == before  # removed even when the block raises


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_batched_gates_equal_separate_runs(arch, attn, enc_small, tok):
    model = tiny_model(arch, init=0.3)
    if attn == "sdpa" and arch == "deberta-v2":
        pytest.skip("DeBERTa-v2 has no SDPA implementation in transformers")
    model.config._attn_implementation = attn
    ad = get_adapter(model)
    b = _batch(enc_small, tok, 3)
    gates = torch.ones(3, 2, 4)
    gates[0, 0, 1] = 0
    gates[1, 1, 3] = 0
    gates[2, 0, 2] = 0.5
    with torch.no_grad(), head_gates(model, ad, gates):
        batched = model(**b).logits
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in b.items()}
        with torch.no_grad(), head_gates(model, ad, gates[i]):
            assert torch.allclose(model(**one).logits[0], batched[i], atol=1e-5)
    with torch.no_grad():  # a zero gate really changes the output
        assert not torch.allclose(model(**{k: v[:1] for k, v in b.items()}).logits[0], batched[0], atol=1e-6)


def test_per_head_modules_outside_qkvo_are_named():
    """DeBERTa with share_att_key=False projects relative positions with its own per-head modules,
    which U and the gradient scores leave out: measure_meta.json lists them."""
    separate = tiny_model("deberta-v2")
    assert get_adapter(separate).unmeasured_head_modules(separate) == [
        f"deberta.encoder.layer.{l}.attention.self.{p}" for l in range(2) for p in ("pos_key_proj", "pos_query_proj")]
    shared = tiny_model("deberta-v2:shared")
    assert get_adapter(shared).unmeasured_head_modules(shared) == []
    assert get_adapter(shared).reuses_projections(shared.config) and not \
        get_adapter(separate).reuses_projections(separate.config)
    bert = tiny_model("bert")
    assert get_adapter(bert).unmeasured_head_modules(bert) == []
