"""Training speed settings (headplast/train/speed.py): what they change is only how fast.

Dropout masks from numpy are checked against masks rebuilt from the same bit generator by
hand; the attention path against a naive softmax(QK^T)V; bf16 autocast by the dtype the
matrix products run in while the weights stay fp32; run identities of older runs kept."""

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch import nn

from headplast.errors import HeadplastError
from headplast.train import speed
from headplast.train.config import TrainConfig
from headplast.train.speed import (ATTENTION, NumpyDropout, clip_in_step, frozen_linears_in, grad_norm, numpy_dropout,
                                  sdpa_numpy_dropout)
from tiny import ALL_ARCHS, ARCHS, tiny_model, tiny_run_kwargs


def _reference_keep(seed: int, p: float, n: int, skip: int = 0) -> np.ndarray:
    """The keep-mask NumpyDropout draws: four int16 per 64-bit word, kept at >= round(p*65536) - 32768."""
    bits = np.random.SFC64(seed)
    if skip:
        bits.random_raw(skip)
    draws = bits.random_raw((n + 3) // 4).view(np.int16)[:n]
    return draws >= int(round(p * 65536)) - 32768


@pytest.mark.parametrize("p,shape,dtype", [(0.1, (7, 13, 33), torch.float32), (0.5, (4, 5), torch.float32),
                                           (0.1, (3, 9, 16), torch.bfloat16)])
def test_numpy_dropout_masks_scale_and_rate(p, shape, dtype):
    x = torch.randn(shape).to(dtype)
    d = NumpyDropout(p, np.random.SFC64(7)).train()
    y = d(x)
    keep = _reference_keep(7, p, x.numel()).reshape(shape)
    scale = torch.tensor(1 / (1 - p), dtype=dtype)  # torch's dropout scales its mask in the input's dtype
    assert y.dtype == dtype
    assert torch.equal(y, x * torch.from_numpy(keep).to(dtype) * scale)
    # the next call continues the stream; eval mode and p = 0 are the identity
    y2 = d(x)
    assert torch.equal(y2 != 0, torch.from_numpy(_reference_keep(7, p, x.numel(), (x.numel() + 3) // 4))
                       .reshape(shape) & (x != 0))
    assert d.eval()(x) is x and NumpyDropout(0.0, np.random.SFC64(1)).train()(x) is x


def test_numpy_dropout_keeps_the_probability():
    x = torch.ones(1 << 20)
    y = NumpyDropout(0.1, np.random.SFC64(3)).train()(x)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.002  # 1M draws: sd 0.0003


@pytest.mark.parametrize("masked", [False, True])
def test_attention_path_equals_naive_attention(masked):
    torch.manual_seed(0)
    B, H, T, d = 2, 3, 5, 4
    q, k, v = (torch.randn(B, H, T, d) for _ in range(3))
    mask = None
    if masked:
        mask = torch.ones(B, 1, T, T, dtype=torch.bool)
        mask[1, :, :, 3:] = False  # example 1 has 3 real tokens
    module = nn.Module()
    module.dropout, module.is_causal = NumpyDropout(0.25, np.random.SFC64(11)).train(), False
    out, _ = sdpa_numpy_dropout(module, q, k, v, mask, dropout=0.25, scaling=0.5)
    scores = q @ k.transpose(-1, -2) * 0.5
    if masked:
        scores = scores.masked_fill(~mask, float("-inf"))
    keep = torch.from_numpy(_reference_keep(11, 0.25, B * H * T * T).reshape(B, H, T, T)).float()
    expect = ((scores.softmax(-1) * keep / 0.75) @ v).transpose(1, 2)
    assert out.shape == (B, T, H, d)
    assert torch.allclose(out, expect, atol=1e-6)
    # no dropout (evaluation): transformers' own SDPA, unchanged
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.5)
    assert torch.equal(sdpa_numpy_dropout(module, q, k, v, mask, dropout=0.0, scaling=0.5)[0], ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_numpy_dropout_swaps_every_dropout_and_restores_the_model(arch):
    model = tiny_model(arch)
    before = {n: m for n, m in model.named_modules() if type(m) is nn.Dropout}
    attention = model.config._attn_implementation
    x = {"input_ids": torch.randint(5, 90, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    x["attention_mask"][0, 7:] = 0
    ref = model.eval()(**x).logits
    runs = []
    with numpy_dropout(model, seed=5) as n:
        assert n == len(before) > 0
        assert not any(type(m) is nn.Dropout for m in model.modules())
        if attention == "sdpa":
            assert model.config._attn_implementation == ATTENTION
        assert torch.equal(model.eval()(**x).logits, ref)  # evaluation: exactly the model's own
        runs.append(model.train()(**x).logits)
    with numpy_dropout(model, seed=5):
        runs.append(model.train()(**x).logits)
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], ref)  # seeded, and dropping
    after = {n: m for n, m in model.named_modules() if type(m) is nn.Dropout}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert model.config._attn_implementation == attention


def _lora_grads(model, x, hold: bool) -> dict:
    """Gradients of one bf16-autocast forward/backward, with the frozen weights held in bf16 or not."""
    model.zero_grad(set_to_none=True)
    with frozen_linears_in(model, torch.bfloat16) if hold else nullcontext() as n:
        if hold:
            frozen = [m.weight for m in model.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad]
            assert n >= len(frozen) > 0 and {w.dtype for w in frozen} == {torch.bfloat16}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**x).logits.float().pow(2).sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_weights_held_in_bf16_give_the_same_gradients_and_are_put_back(arch):
    from headplast.arch.adapters import get_adapter
    from headplast.train.fit import trainable_model

    model = tiny_model(arch)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    model, _ = trainable_model(model, get_adapter(model), TrainConfig(method="lora", seed=1, lora_r=4))
    model.eval()  # no dropout: the two passes must see the same inputs
    x = {"input_ids": torch.randint(5, 90, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    ref, held = _lora_grads(model, x, False), _lora_grads(model, x, True)
    assert ref.keys() == held.keys() and all(torch.equal(ref[k], held[k]) for k in ref)
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", "").replace(".original_module", ""): p
              for k, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) > len(before) / 2 and frozen.keys() <= before.keys()
    for k, p in frozen.items():  # every frozen weight is fp32 again, with its values
        assert p.dtype == torch.float32 and torch.equal(p, before[k]), k
    fft = tiny_model(arch)
    with frozen_linears_in(fft, torch.bfloat16) as n:  # full fine-tuning: nothing frozen, nothing held
        assert n == 0


def test_clipping_inside_fused_adamw_matches_clip_grad_norm_then_step():
    torch.manual_seed(0)
    shapes = [(300, 16), (16,), (7, 5)]
    ref = [torch.randn(s, requires_grad=True) for s in shapes]
    ours = [p.detach().clone().requires_grad_(True) for p in ref]
    opt_ref = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01, fused=True)
    opt_ours = torch.optim.AdamW(ours, lr=1e-2, weight_decay=0.01, fused=True)
    for scale in (30.0, 0.01, 5.0):  # clipped, not clipped (factor 1), clipped
        grads = [torch.randn(s) * scale for s in shapes]
        for p, q, g in zip(ref, ours, grads):
            p.grad, q.grad = g.clone(), g.clone()
        expected = torch.nn.utils.clip_grad_norm_(ref, 1.0)
        norm = clip_in_step(opt_ours, ours, 1.0)
        assert torch.allclose(norm, expected, rtol=1e-5)
        opt_ref.step(), opt_ours.step()
        assert all(torch.allclose(p, q, rtol=0, atol=1e-6) for p, q in zip(ref, ours))
        # the step left the gradients clipped (divided as it read them), as clip_grad_norm_ does
        assert all(torch.allclose(p.grad, q.grad, rtol=1e-6) for p, q in zip(ref, ours))
    # an optimizer without the hook (not fused) is left to clip as usual
    assert clip_in_step(torch.optim.SGD(ours, lr=0.1), ours, 1.0) is None


def test_grad_norm_is_the_float64_norm():
    torch.manual_seed(1)
    grads = [torch.randn(1000, 50), torch.randn(3, 4).t(), torch.randn(7)]  # one not contiguous
    exact = torch.cat([g.double().reshape(-1) for g in grads]).norm()
    assert torch.allclose(grad_norm(grads), exact, rtol=1e-6)


def test_hardware_defaults_are_resolved_recorded_and_legacy_runs_keep_their_identity():
    cfg, sources = speed.resolve_speed(TrainConfig())
    assert cfg.train_dtype in ("float32", "bfloat16") and cfg.dropout_masks in ("numpy", "torch")
    assert sources["train_dtype"] == sources["dropout_masks"] == "hardware default (cpu)"
    assert None not in cfg.speed().values() and cfg.device == "cpu"
    given, sources = speed.resolve_speed(TrainConfig(train_dtype="float32", dropout_masks="torch"))
    assert "train_dtype" not in sources and given.train_dtype == "float32"
    legacy = given.run_fields()  # how runs were keyed before these settings existed
    assert "train_dtype" not in legacy and "dropout_masks" not in legacy and "tune_allocator" not in legacy
    new = TrainConfig(train_dtype="bfloat16", dropout_masks="numpy").run_fields()
    assert new["train_dtype"] == "bfloat16" and new["dropout_masks"] == "numpy"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_training_computes_in_the_train_dtype_with_fp32_weights(dtype, model_dirs, tmp_path, monkeypatch):
    from headplast.train import fit

    seen = []
    real = fit._make_trainer

    def spy(model, *a, **kw):  # record the dtype of the query projection's output in training
        lin = [m for n, m in model.named_modules() if n.endswith("attention.self.query")][0]
        lin.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
        return real(model, *a, **kw)

    monkeypatch.setattr(fit, "_make_trainer", spy)
    clipped = []  # bf16 runs clip inside fused AdamW at every step; fp32 runs as they always did
    monkeypatch.setattr(fit, "clip_in_step", lambda *a: clipped.append(speed.clip_in_step(*a)) or clipped[-1])
    from headplast.steps.train_step import run_train
    out = run_train(TrainConfig(method="fft", train_dtype=dtype, **tiny_run_kwargs(model_dirs["bert"], tmp_path))).path
    assert seen and set(seen) == {getattr(torch, dtype)}
    rc0 = json.loads((out / "run_config.json").read_text())
    assert len(clipped) == (rc0["train_steps"] if dtype == "bfloat16" else 0)
    assert all(n is not None and n > 0 for n in clipped)
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["config"].get("train_dtype", "float32") == dtype
    from safetensors.torch import load_file
    assert {t.dtype for t in load_file(out / "ckpt_final" / "model.safetensors").values()} == {torch.float32}


@pytest.mark.slow
def test_run_trained_before_the_speed_settings_is_refused_with_the_flags_that_keep_it(model_dirs, tmp_path):
    from headplast.steps.train_step import run_train

    kw = tiny_run_kwargs(model_dirs["bert"], tmp_path)
    out = run_train(TrainConfig(method="fft", train_dtype="float32", dropout_masks="torch", **kw)).path
    again = run_train(TrainConfig(method="fft", train_dtype="float32", dropout_masks="torch", **kw))
    assert again.status == "skipped"  # legacy values: same identity as before the fields existed
    rc = json.loads((out / "run_config.json").read_text())
    assert "train_dtype" not in rc["config"]
    with pytest.raises(HeadplastError) as e:
        run_train(TrainConfig(method="fft", train_dtype="bfloat16", dropout_masks="numpy", **kw))
    assert "--train-dtype float32 --dropout-masks torch" in e.value.fix


def _tiny_sentiment(n: int = 24):
    from headplast.data.loaders import Examples

    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "dull", "fun", "great", "awful", "acting"]
    return Examples(tuple((" ".join(rng.choice(words, 5)),) for _ in range(n)), rng.integers(0, 2, n), "train", "t")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_training_only_the_used_embedding_rows_gives_the_same_weights(arch, tmp_path, monkeypatch):
    from headplast.arch.adapters import get_adapter
    from headplast.train import fit
    from tiny import tiny_tokenizer

    tok, ex = tiny_tokenizer(tmp_path / "tok"), _tiny_sentiment()
    cfg = TrainConfig(method="fft", seed=1, train_dtype="bfloat16", dropout_masks="numpy", num_epochs=2, batch_size=4,
                      learning_rate=5e-3, weight_decay=0.1)
    seen, real = [], speed.embedding_rows_in_use

    def spy(model, ids):
        seen.append(ids)
        return real(model, ids)

    def train(restrict: bool):
        model = tiny_model(arch)
        model, _ = fit.trainable_model(model, get_adapter(model), cfg)
        monkeypatch.setattr(fit, "embedding_rows_in_use", spy if restrict else lambda m, ids: nullcontext())
        steps = fit.fine_tune(model, tok, ex, cfg).global_step
        emb = model.get_input_embeddings()
        assert type(emb) is nn.Embedding  # the model's own module is back
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, emb, steps

    theta0 = tiny_model(arch).get_input_embeddings().weight.detach().clone()
    ours, emb, steps = train(True)
    ref, _, _ = train(False)
    assert ours.keys() == ref.keys()
    for k in ref:  # every weight, the embedding rows the data never used included, bit for bit
        assert torch.equal(ours[k], ref[k]), k
    used = torch.unique(seen[0])
    unused = torch.ones(len(theta0), dtype=torch.bool)
    unused[used] = False
    assert 0 < len(used) < len(theta0) / 2 and steps == 12
    # the unused rows moved (weight decay at each step) exactly as AdamW moved them
    assert not torch.equal(emb.weight[unused], theta0[unused])


def test_used_rows_refuse_an_optimizer_that_would_move_zero_gradient_rows():
    emb = nn.Embedding(10, 4)
    rows = speed.UsedRows(emb, torch.tensor([1, 3, 4]))
    assert torch.equal(rows(torch.tensor([[3, 1]])), emb(torch.tensor([[3, 1]])))
    with pytest.raises(IndexError):  # an id the data was not scanned for is refused, not read as another row
        rows(torch.tensor([[2]]))
    opt = torch.optim.AdamW(rows.parameters(), lr=0.1, weight_decay=0.5)
    rows.record_step(opt)
    assert rows.decay == [1 - 0.1 * 0.5]
    with pytest.raises(RuntimeError, match="AdamW"):  # plain Adam puts weight decay into the moments
        rows.record_step(torch.optim.Adam(rows.parameters(), weight_decay=0.5))
    tied = nn.Module()
    tied.emb, tied.head = emb, nn.Linear(4, 10, bias=False)
    tied.head.weight = emb.weight
    tied.get_input_embeddings = lambda: tied.emb
    with speed.embedding_rows_in_use(tied, torch.tensor([1, 2])) as r:  # tied to an LM head: left whole
        assert r is None and tied.emb is emb


def test_only_torch_adamw_on_whole_parameters_trains_the_used_rows():
    from types import SimpleNamespace

    from headplast.train.fit import _torch_adamw

    def trainer(optim, deepspeed=False, fsdp=False):
        return SimpleNamespace(args=SimpleNamespace(optim=optim), is_deepspeed_enabled=deepspeed, is_fsdp_enabled=fsdp)

    assert _torch_adamw(trainer("adamw_torch_fused")) and _torch_adamw(trainer("adamw_torch"))
    assert not _torch_adamw(trainer("adafactor")) and not _torch_adamw(trainer("adamw_torch", deepspeed=True))
    assert not _torch_adamw(trainer("adamw_torch_fused", fsdp=True))


def _loss_and_grads(model, batch, labels):
    model.zero_grad(set_to_none=True)
    out = model(**batch, labels=labels)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["fft", "lora"])
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_last_layer_on_token0_gives_the_same_logits_and_gradients(arch, method):
    """The task head reads token 0: cutting the last layer's O and post-attention norm to it
    changes no logit and no gradient (dropout off), and that layer's FFN then sees one token."""
    from headplast.arch.adapters import get_adapter
    from headplast.train.fit import trainable_model

    torch.manual_seed(0)
    model = tiny_model(arch, layers=3 if arch.endswith("conv") else 2)
    adapter = get_adapter(model)
    model, _ = trainable_model(model, adapter, TrainConfig(method=method, lora_r=2, seed=1))
    model.eval()  # no dropout: both ways draw the same (no) masks
    with torch.no_grad():  # LoRA's B starts at zero: give it values so its gradients flow everywhere
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.randint(5, 60, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:], mask[2, 6:] = 0, 0  # padded examples
    batch, labels = {"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 1, 1])
    ref_logits, ref = _loss_and_grads(model, batch, labels)
    last = adapter.layer_modules(model)[-1]
    ffn_out = [m for n, m in last.named_modules() if n == adapter.ffn[-1]][0]
    seen = []
    probe = ffn_out.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    with speed.last_layer_token0(model, adapter) as applied:
        logits, grads = _loss_and_grads(model, batch, labels)
    assert torch.allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    if adapter.reads_last:  # decoders read each example's last token: nothing to cut (and nothing cut)
        assert not applied and seen == [7]
        return
    assert applied and seen == [1]
    assert grads.keys() == ref.keys() and len(grads) > 2
    for n in ref:
        assert torch.allclose(grads[n], ref[n], rtol=1e-4, atol=1e-6), n
    seen.clear()
    _loss_and_grads(model, batch, labels)
    probe.remove()
    assert seen == [7]  # hooks removed: the whole sequence again


def test_last_layer_on_token0_is_skipped_where_the_encoder_mixes_into_that_layer():
    """DeBERTa-v2's conv mixes the embeddings into layer 0's output: a one-layer model keeps
    its whole last layer."""
    from headplast.arch.adapters import get_adapter

    model = tiny_model("deberta-v2:conv", layers=1)
    with speed.last_layer_token0(model, get_adapter(model)) as applied:
        assert not applied
    assert speed.resolve_speed(TrainConfig(device="cpu"))[0].last_layer_token0 and "last_layer_token0" not in \
        TrainConfig(last_layer_token0=False).run_fields()  # runs trained before it keep their identity


def test_steady_steps_switch_modes_and_clear_gradients_as_the_module_walks_do():
    """peft's fresh wrapper says "training" while the model inside is in eval mode: the first
    train() must still walk the tree; later ones skip it until eval() came in between."""
    from headplast.arch.adapters import get_adapter
    from headplast.train.fit import trainable_model

    model = tiny_model("bert").eval()
    model, _ = trainable_model(model, get_adapter(model), TrainConfig(method="lora", lora_r=2, seed=1))
    with speed.steady_steps(model):
        model.train()
        assert all(m.training for m in model.modules())
        out = model(input_ids=torch.randint(5, 60, (2, 6)), labels=torch.tensor([0, 1]))
        out.loss.backward()
        assert any(p.grad is not None for p in model.parameters())
        model.zero_grad()
        assert all(p.grad is None for p in model.parameters())
        leaf = model.get_submodule("base_model.model.classifier")
        leaf.eval()
        model.train()
        assert not leaf.training  # the walk is skipped: the model was already put in training mode
        model.eval()
        assert not any(m.training for m in model.modules())
        model.train()  # back from eval (Trainer's evaluation): walked again
        assert all(m.training for m in model.modules())
    assert "train" not in vars(model) and "zero_grad" not in vars(model)  # the methods are back


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fft", "lora"])
def test_lean_steps_train_the_same_weights_and_count_the_same_flops(method, tmp_path):
    from headplast.arch.adapters import get_adapter
    from headplast.train import fit
    from tiny import tiny_tokenizer

    tok, ex = tiny_tokenizer(tmp_path / "tok"), _tiny_sentiment()
    runs = []
    for lean in (True, False):
        cfg = TrainConfig(method=method, seed=1, train_dtype="bfloat16", dropout_masks="numpy", num_epochs=2,
                          batch_size=4, learning_rate=5e-3, lora_r=2, lean_steps=lean)
        model = tiny_model("bert").eval()
        model, _ = fit.trainable_model(model, get_adapter(model), cfg)
        out = fit.fine_tune(model, tok, ex, cfg)
        runs.append((out, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (lean, w_lean), (plain, w_plain) = runs
    assert lean.global_step == plain.global_step == 12 and lean.training_loss == plain.training_loss
    assert lean.metrics["total_flos"] == plain.metrics["total_flos"] > 0
    assert w_lean.keys() == w_plain.keys()
    for k in w_plain:
        assert torch.equal(w_lean[k], w_plain[k]), k
