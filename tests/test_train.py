import json

import pytest
import torch

from headplast.arch import get_adapter
from headplast.arch.loading import load_model
from headplast.errors import HeadplastError
from headplast.store.io import state_dict_hash
from headplast.train.config import TrainConfig
from headplast.train.lora import adapted_modules, make_lora_model, resolve_targets, trainable_audit
from headplast.steps.train_step import run_train
from tiny import ARCHS, DECODERS, tiny_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ARCHS + DECODERS)
def test_lora_adapts_exactly_qkvo_and_audit_matches(arch):
    model = tiny_model(arch)
    ad = get_adapter(model)
    pm = make_lora_model(model, ad, 4, 8, 0.1, resolve_targets(ad, model))
    mods = adapted_modules(pm)
    L = ad.num_layers(model.config)
    assert sorted(mods) == sorted({ad.module_name(l, k) for l in range(L) for k in "qkvo"})
    assert len(mods) == (2 if ad.fused_qkv else 4) * L  # GPT-2: c_attn (Q, K, V) and c_proj
    ffn = {n for l in range(L) for n in ad.ffn_names(l)}
    assert not set(mods) & ffn and not any("pooler" in m or "classifier" in m for m in mods)
    audit = trainable_audit(pm, ad)
    trainable = sum(p.numel() for n, p in pm.named_parameters() if p.requires_grad)
    assert audit["trainable"] == trainable
    lora = sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n)
    # r (in + out) per adapted module (decoders: K/V narrower under grouped-query attention)
    shapes = [pm.base_model.model.get_submodule(m).base_layer.weight.shape for m in mods]
    assert audit["groups"]["lora"]["trainable"] == lora == sum(4 * (i + o) for o, i in shapes)
    assert ad.reads_last or lora == 4 * L * 4 * (32 + 32)
    fresh = tiny_model(arch)  # peft wrapped `model`'s head modules (original + trained copy)
    head = sum(p.numel() for n in ad.head_modules for p in fresh.get_submodule(n).parameters())
    assert audit["groups"]["task_head"]["trainable"] == head
    assert audit["groups"]["ffn"]["trainable"] == 0 and audit["groups"]["attention_qkvo"]["trainable"] == 0


def test_lora_targets_can_add_ffn_or_name_modules():
    model = tiny_model("bert")
    ad = get_adapter(model)
    assert len(resolve_targets(ad, model, "attn,ffn")) == 2 * (4 + 2)
    name = ad.module_name(1, "v")
    assert resolve_targets(ad, model, name) == [name]
    with pytest.raises(HeadplastError, match="neither a keyword"):
        resolve_targets(ad, model, "dense")


def _cfg(model_dir, out, **kw):
    base = dict(task="RTE", model=str(model_dir), output_root=str(out), max_train_samples=32, num_epochs=1, batch_size=8,
                probe_epochs=10, eval_size=16, max_length=48)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
def test_theta0_shared_between_fft_and_lora_and_training_is_deterministic(arch, model_dirs, tmp_path):
    fft = run_train(_cfg(model_dirs[arch], tmp_path / "a", method="fft")).path
    lora = run_train(_cfg(model_dirs[arch], tmp_path / "a", method="lora", lora_r=4, lora_alpha=8)).path
    again = run_train(_cfg(model_dirs[arch], tmp_path / "b", method="fft")).path  # fresh store, same seed
    h = [state_dict_hash(load_model(str(d / "ckpt_init")).state_dict()) for d in (fft, lora, again)]
    assert h[0] == h[1] == h[2]
    rc = [json.loads((d / "run_config.json").read_text()) for d in (fft, lora, again)]
    assert rc[0]["theta0_hash"] == rc[1]["theta0_hash"] == h[0]
    assert rc[0]["theta1_hash"] == rc[2]["theta1_hash"]  # same seed twice: same theta1 on CPU
    t1 = [load_model(str(d / "ckpt_final")).state_dict() for d in (fft, again)]
    assert all(torch.equal(t1[0][k], t1[1][k]) for k in t1[0])
    # theta0's head is what the recorded probe chose: the seeded random head if no step beat it on
    # the held-out examples (random tiny model: no signal), else a fitted one
    # (test_probe_fits_the_head_with_early_stopping shows it fits where there is signal)
    probe = rc[0]["theta0"]["probe"]
    assert probe["max_steps"] == 10 and 0 <= probe["best_step"] <= 10
    torch.manual_seed(1)
    random_head = load_model(str(model_dirs[arch]), num_labels=2).classifier.state_dict()
    probed = load_model(str(fft / "ckpt_init")).classifier.state_dict()
    assert all(torch.equal(random_head[k], probed[k]) for k in probed) == (probe["best_step"] == 0)
    for r in rc[:2]:
        for key in ("adapted_modules", "trainable", "validation", "collapsed", "versions", "hardware",
                    "git_commit", "theta0_hash", "theta1_hash", "config"):
            assert key in r
        assert r["status"] == "complete" and r["config"]["learning_rate"] > 0
    assert len(rc[1]["adapted_modules"]) == 8


def test_different_run_refused_unless_force_and_same_run_skipped(model_dirs, tmp_path):
    out = run_train(_cfg(model_dirs["bert"], tmp_path)).path
    mtime = (out / "run_config.json").stat().st_mtime_ns
    again = run_train(_cfg(model_dirs["bert"], tmp_path))  # identical: skipped
    assert again.path == out and again.status == "skipped"
    assert (out / "run_config.json").stat().st_mtime_ns == mtime
    with pytest.raises(HeadplastError, match="different run"):
        run_train(_cfg(model_dirs["bert"], tmp_path, learning_rate=1e-3))
    run_train(_cfg(model_dirs["bert"], tmp_path, learning_rate=1e-3, force=True))
    assert json.loads((out / "run_config.json").read_text())["config"]["learning_rate"] == 1e-3


def test_nonfinite_loss_stops_and_keeps_theta0(model_dirs, tmp_path):
    with pytest.raises(HeadplastError, match="training stopped") as e:
        run_train(_cfg(model_dirs["bert"], tmp_path, learning_rate=1e30, max_train_samples=64))
    out = tmp_path / "FFT" / "RTE" / "seed1"
    assert "--learning-rate" in str(e.value)
    assert (out / "ckpt_init" / "model.safetensors").exists() and not (out / "ckpt_final").exists()
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["status"] == "failed_nonfinite_loss"


def test_missing_data_and_unknown_task_errors(model_dirs, tmp_path):
    with pytest.raises(HeadplastError, match="no train data for MRPC"):
        run_train(_cfg(model_dirs["bert"], tmp_path, task="MRPC", data_dir=str(tmp_path)))
    with pytest.raises(HeadplastError, match="unknown task"):
        run_train(_cfg(model_dirs["bert"], tmp_path, task="nope"))


def test_probe_fits_the_head_with_early_stopping(model_dirs, tok):
    import numpy as np

    from headplast.data import get_task
    from headplast.data.loaders import Examples
    from headplast.train.evaluate import evaluate
    from headplast.train.theta0 import build_theta0

    task = get_task("RTE")
    texts = tuple((("a b c " if y == 0 else "x y z ") * (1 + i % 3), "q") for i, y in enumerate([0, 1] * 40))
    ex = Examples(texts, np.array([0, 1] * 40), "train", "synthetic")
    m1, p1 = build_theta0(str(model_dirs["bert"]), task, tok, ex, 3, "probe", 32, 200, 1e-2)
    m2, p2 = build_theta0(str(model_dirs["bert"]), task, tok, ex, 3, "probe", 32, 200, 1e-2)
    assert state_dict_hash(m1.state_dict()) == state_dict_hash(m2.state_dict()) and p1 == p2
    assert p1["best_step"] > 0 and p1["heldout_examples"] == 8
    assert evaluate(m1, task, tok, ex, 32)["accuracy"] > 0.9  # the signal is linearly separable
    m0, p0 = build_theta0(str(model_dirs["bert"]), task, tok, ex, 3, "random", 32, 200, 1e-2)
    assert p0 is None and state_dict_hash(m0.state_dict()) != state_dict_hash(m1.state_dict())


def test_lora_training_is_reproducible_across_processes(model_dirs, tmp_path):
    """LoRA's random A init must come from --seed: this torch seeds every process differently, and a
    theta0 reused from _shared/ (as after run_mnli.sh) seeds nothing before the adapter is made."""
    import subprocess
    import sys

    common = ["--model", str(model_dirs["bert"]), "--output-root", str(tmp_path), "--max-train-samples", "32",
              "--num-epochs", "1", "--train-batch-size", "8", "--probe-epochs", "10", "--eval-size", "16",
              "--max-length", "48"]
    hashes = []
    for method, extra in (("fft", []), ("lora", []), ("lora", ["--force"])):
        r = subprocess.run([sys.executable, "-m", "headplast", "train", "--task", "RTE", "--method", method, "--lora-r", "4",
                            "--lora-alpha", "8", *common, *extra], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        if method == "lora":  # theta0 comes from _shared/ both times
            rc = json.loads((tmp_path / "LoRA" / "RTE" / "seed1_r4" / "run_config.json").read_text())
            hashes.append(rc["theta1_hash"])
    assert hashes[0] == hashes[1]


RECIPE_CASES = [
    # (config, expected resolved values, expected sources)
    (dict(task="sst2"), dict(num_epochs=1.0, max_train_samples=8000, eval_source="holdout", eval_size=6000,
                             learning_rate=2e-5), "SST-2 recipe"),
    (dict(task="SST-2", method="lora"), dict(learning_rate=2e-3, eval_source="holdout"), "SST-2 recipe"),
    (dict(task="RTE", method="lora"), dict(num_epochs=3.0, max_train_samples=None, eval_source="validation",
                                           eval_size=1024, learning_rate=2e-3), "general default"),
    (dict(task="mine", train_file="a.csv", validation_file="b.csv"), dict(num_epochs=3.0, eval_size=1024),
     "general default"),
]


@pytest.mark.parametrize("given,expected,source", RECIPE_CASES)
def test_unset_fields_get_the_task_recipe_or_the_guide_default(given, expected, source):
    from headplast.train.recipes import resolve

    cfg, sources = resolve(TrainConfig(**given))
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert {sources[k] for k in expected} == {source}
    assert resolve(cfg)[0] == cfg  # idempotent


def test_values_the_user_gives_are_kept():
    from headplast.train.recipes import resolve

    cfg, sources = resolve(TrainConfig(task="SST-2", num_epochs=2.0, eval_source="validation"))
    assert (cfg.num_epochs, cfg.eval_source, cfg.eval_size) == (2.0, "validation", 6000)
    assert "num_epochs" not in sources and "eval_source" not in sources


def test_nonfinite_loss_is_caught_between_looks(model_dirs, tmp_path, monkeypatch):
    """On a GPU the loss is looked at every CHECK_EVERY steps (each look waits for the GPU): a
    non-finite loss between looks is still caught, at the next look or at the end."""
    from headplast.train import fit

    looks = []
    monkeypatch.setattr(fit, "_look", lambda loss, step: looks.append(step) or step % 1000 == 999)  # never in between
    with pytest.raises(HeadplastError, match="training stopped"):
        run_train(_cfg(model_dirs["bert"], tmp_path, learning_rate=1e30, max_train_samples=64))
    assert looks and (tmp_path / "FFT" / "RTE" / "seed1" / "run_config.json").exists()
    assert json.loads((tmp_path / "FFT" / "RTE" / "seed1" / "run_config.json").read_text())["status"] == \
        "failed_nonfinite_loss"
