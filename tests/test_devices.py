"""What changes where the guide's users run: checkpoints stored in half precision, models moved
between devices while training, several GPUs, and defaults resolved from the hardware (the
parts a CPU can simulate; bench/gpu_check.py checks the rest on a GPU)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from headplast.measure import registry
from headplast.store.io import read_jsonl

from headplast.cli.main import main
from headplast.store import layout
from tiny import ARCHS, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow
SMALL = ["--max-train-samples", "24", "--num-epochs", "1", "--batch-size", "8", "--eval-size", "8",
         "--max-length", "32", "--learning-rate", "3e-3", "--probe-epochs", "5", "--task", "RTE"]


def half_checkpoint(arch: str, path: Path) -> Path:
    """A tiny model saved in fp16 with no dtype in its config.json (as many hub checkpoints are)."""
    tiny_model(arch).half().save_pretrained(path)
    tiny_tokenizer(path / "_tok").save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    for k in ("dtype", "torch_dtype"):
        cfg.pop(k, None)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_half_precision_checkpoint_trains_and_measures_in_fp32(arch, tmp_path):
    from headplast.arch.loading import load_model, stored_dtype

    model_dir = half_checkpoint(arch, tmp_path / "m")
    assert stored_dtype(str(model_dir)) == "float16"
    assert all(p.dtype == torch.float32 for p in load_model(str(model_dir)).parameters())
    out = tmp_path / "out"
    for method in ("fft", "lora"):
        assert main(["train", "--model", str(model_dir), "--output-root", str(out), "--method", method, *SMALL]) == 0
        run = out / ("FFT/RTE/seed1" if method == "fft" else "LoRA/RTE/seed1_r8")
        assert main(["measure", str(run)]) == 0
        rc = json.loads((run / layout.RUN_CONFIG).read_text())
        assert rc["model"]["stored_dtype"] == "float16" and rc["model"]["loaded_dtype"] == "float32"
        theta0 = load_model(str(run / layout.CKPT_INIT))
        assert {p.dtype for p in theta0.parameters()} == {torch.float32}
        for m in registry.required():  # every measurement written, finite
            rows = read_jsonl(run / m.file, 8, m.fields)
            assert all(np.isfinite(r[f]) for r in rows for f in m.fields if f != "kl"), m.name


def test_stored_dtype_of_fp32_and_bf16_checkpoints(tmp_path):
    from headplast.arch.loading import stored_dtype

    tiny_model("bert").save_pretrained(tmp_path / "f32")
    tiny_model("bert").to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert stored_dtype(str(tmp_path / "f32")) == "float32"
    assert stored_dtype(str(tmp_path / "bf16")) == "bfloat16"
    assert stored_dtype("no/such-model-offline") is None


def _lora_model():
    from headplast.arch.adapters import get_adapter
    from headplast.train.config import TrainConfig
    from headplast.train.fit import trainable_model

    model = tiny_model("bert")
    return trainable_model(model, get_adapter(model), TrainConfig(method="lora", lora_r=2))[0]


@pytest.mark.parametrize("move", ["dtype", "device"])
def test_frozen_weights_are_put_back_where_the_model_moved_inside_the_block(move):
    """Trainer moves the model to the GPU after the block is entered: what the block saved must
    go back onto the parameters' new device (the meta device stands in for a GPU on a CPU), in
    the dtype the rest of the model has then."""
    from headplast.train.speed import frozen_linears_in

    model = _lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with frozen_linears_in(model, torch.bfloat16) as n:
        assert n > 0 and any(p.dtype == torch.bfloat16 for p in model.parameters())
        model.to(torch.float64) if move == "dtype" else model.to("meta")
    params = dict(model.named_parameters())
    if move == "dtype":  # every parameter float64, the frozen ones from their fp32 originals (exact)
        assert {p.dtype for p in params.values()} == {torch.float64}
        assert all(torch.equal(params[n].detach(), before[n].double()) for n in before)
    else:
        assert {p.device.type for p in params.values()} == {"meta"}
        assert {p.dtype for p in params.values()} == {torch.float32}


def _args(cfg_kw, tmp_path):
    from headplast.train.config import TrainConfig
    from headplast.train.fit import training_args
    from headplast.train.speed import resolve_speed

    cfg = resolve_speed(TrainConfig(learning_rate=1e-3, num_epochs=1, **cfg_kw))[0]
    return training_args(cfg, str(tmp_path))


def test_several_visible_gpus_train_on_one_with_the_recorded_batch(tmp_path):
    """With N GPUs visible TrainingArguments sets n_gpu = N and Trainer wraps the model in
    DataParallel with batch N x 32. Faked here by what TrainingArguments would have set; the
    plain arguments show the mechanism (and notice if transformers changes it)."""
    from torch import nn
    from transformers import Trainer, TrainingArguments

    ours = _args({"train_dtype": "float32"}, tmp_path)  # one accelerate state for both Trainers
    plain = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=32, use_cpu=True)
    for args in (ours, plain):
        args._n_gpu = 8  # what _setup_devices sets with 8 visible GPUs
    assert plain.n_gpu == 8 and plain.train_batch_size == 256
    assert ours.n_gpu == 1 and ours.train_batch_size == 32
    model = tiny_model("bert")
    assert isinstance(Trainer(model=model, args=plain)._wrap_model(model), nn.DataParallel)
    assert not isinstance(Trainer(model=model, args=ours)._wrap_model(model), nn.DataParallel)


def test_bf16_emulation_is_not_native(monkeypatch):
    """A V100/T4 'supports' bf16 only by emulation: torch.cuda.is_bf16_supported() says True
    unless including_emulation=False."""
    from headplast.arch import device

    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # emulated only

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert device.native_bf16("cuda") is False and asked == [False]


def test_gpu_defaults_are_plain_trainer_and_cpu_tricks_are_refused_there(monkeypatch):
    from headplast.errors import HeadplastError
    from headplast.train import speed
    from headplast.train.config import TrainConfig

    monkeypatch.setattr(speed, "native_bf16", lambda d: True)
    cfg, sources = speed.resolve_speed(TrainConfig(device="cuda"))
    assert cfg.speed() == {"train_dtype": "bfloat16", "dropout_masks": "torch", "last_layer_token0": False,
                           "lean_steps": False, "tune_allocator": False, "fused_clip": False,
                           "embedding_rows": False, "frozen_bf16": False}
    assert set(sources.values()) == {"hardware default (cuda)"}
    cpu = speed.resolve_speed(TrainConfig(device="cpu"))[0].speed()
    assert all(cpu[k] for k in ("last_layer_token0", "lean_steps", "tune_allocator", "fused_clip", "embedding_rows",
                                "frozen_bf16")) and cpu["dropout_masks"] == "numpy"
    cuda = torch.device("cuda")
    for bad, flag in (({"dropout_masks": "numpy"}, "--dropout-masks torch"), ({"embedding_rows": True}, "--no-embedding-rows")):
        with pytest.raises(HeadplastError) as e:
            speed.check_speed(replace(cfg, **bad), cuda)
        assert flag in e.value.fix
    with pytest.raises(HeadplastError, match="frozen"):
        speed.check_speed(replace(cfg, train_dtype="float32", frozen_bf16=True), torch.device("cpu"))


def test_every_speed_trick_has_its_own_flag(capsys):
    from headplast.train.speed import SPEED

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in (*SPEED, "device"):
        assert f"--{name.replace('_', '-')}" in text, name
    for name in SPEED:
        if name not in ("train_dtype", "dropout_masks"):
            assert f"--no-{name.replace('_', '-')}" in text, name


PROFILE_A = {"train_dtype": "float32", "dropout_masks": "numpy", "last_layer_token0": True, "lean_steps": True,
             "tune_allocator": True}
PROFILE_B = {"train_dtype": "bfloat16", "dropout_masks": "torch", "last_layer_token0": False, "lean_steps": False,
             "tune_allocator": False}


def test_run_identity_does_not_depend_on_the_machine_that_checks_it(model_dirs, tmp_path, monkeypatch):
    """A run trained where the hardware probe says A is judged by what it recorded when a machine
    whose probe says B looks at it: the same train key, 'up to date', the sweep job done."""
    from headplast.steps import sweep_jobs
    from headplast.steps.pipeline import PipelineConfig
    from headplast.steps.train_step import resolved_config, run_train, train_key
    from headplast.train import speed
    from headplast.train.config import TrainConfig
    from tiny import tiny_run_kwargs

    monkeypatch.setattr(speed, "hardware_defaults", lambda device: PROFILE_A)
    cfg = TrainConfig(method="fft", **tiny_run_kwargs(model_dirs["bert"], tmp_path))
    pipe = PipelineConfig(train=cfg, tasks=("RTE",), methods=("fft",))
    jobs = sweep_jobs.plan(pipe)
    key_a, job_key_a = train_key(resolved_config(cfg)[0]), sweep_jobs.job_key(jobs[0], jobs)
    out = run_train(cfg).path
    rc = json.loads((out / layout.RUN_CONFIG).read_text())
    assert rc["speed"]["train_dtype"] == "float32" and rc["speed"]["dropout_masks"] == "numpy"
    assert rc["device"]["type"] == "cpu" and rc["defaults"]["filled"]["dropout_masks"] == "hardware default (cpu)"
    monkeypatch.setattr(speed, "hardware_defaults", lambda device: PROFILE_B)  # another machine
    resolved, sources = resolved_config(cfg)
    assert resolved.speed() == rc["speed"] and sources["train_dtype"] == "recorded at training"
    assert train_key(resolved) == key_a and sweep_jobs.job_key(jobs[0], jobs) == job_key_a
    assert run_train(cfg).status == "skipped"
    fresh = resolved_config(TrainConfig(method="fft", **{**tiny_run_kwargs(model_dirs["bert"], tmp_path), "seed": 2}))[0]
    assert fresh.train_dtype == "bfloat16" and fresh.dropout_masks == "torch"  # a new run: this machine's defaults


def test_the_pipelines_device_flag_sets_where_its_runs_are_measured_too():
    from headplast.cli.main import _measure_config, build_parser

    for cmd in ("pipeline", "sweep"):
        assert _measure_config(build_parser().parse_args([cmd, "--device", "cpu"])).device == "cpu"
        assert _measure_config(build_parser().parse_args([cmd])).device is None


@pytest.mark.parametrize("setup", ["high", "mkldnn_bf16"])
def test_exact_fp32_leaves_no_mixed_tf32_state_and_restores_the_callers(setup):
    """A script that set torch.set_float32_matmul_precision('high') (or oneDNN's bf16 mode alone):
    inside the block the TF32 flags read consistently (torch >= 2.9 raises at each cuBLAS call on a
    mixed legacy/per-backend state), and the caller's settings are back afterwards."""
    from headplast.arch.device import exact_fp32, precision_state

    b = torch.backends
    torch.set_float32_matmul_precision("highest")
    try:
        if setup == "high":
            torch.set_float32_matmul_precision("high")
        elif hasattr(b, "fp32_precision"):
            b.mkldnn.matmul.fp32_precision = "bf16"
        before = precision_state()
        with exact_fp32() as inside:
            assert b.cuda.matmul.allow_tf32 is False  # what cuBLAS asks at each call: no mixed-API error
            assert inside["float32_matmul_precision"] == "highest" and inside["cuda_matmul"] in ("ieee", "none")
            # --dtype bfloat16: bf16 weights, fp32 accumulation (torch's default allows bf16 reductions)
            assert not b.cuda.matmul.allow_bf16_reduced_precision_reduction and inside["half_reductions"] == "fp32"
            a, c = torch.randn(64, 64), torch.randn(64, 64)
            assert torch.allclose(a @ c, (a.double() @ c.double()).float(), rtol=1e-5, atol=1e-5)
        assert precision_state() == before and before["half_reductions"] == "reduced"  # torch's default, back
    finally:
        torch.set_float32_matmul_precision("highest")
        if hasattr(b, "fp32_precision"):
            for backend in (b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn, b.mkldnn.matmul, b.mkldnn.conv):
                backend.fp32_precision = "ieee"


def test_local_rank_names_a_visible_gpu_or_is_refused(monkeypatch):
    """torchrun: rank r computes on cuda:r; a launcher giving each process one GPU (srun
    --gpus-per-task=1) makes it cuda:0 whatever LOCAL_RANK says; more ranks than GPUs: an error."""
    from headplast.arch.device import compute_device
    from headplast.errors import HeadplastError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert compute_device("cuda:0") == torch.device("cuda", 3) and compute_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert compute_device(None) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(HeadplastError, match="LOCAL_RANK=3"):
        compute_device(None)


def test_runs_trained_in_different_dtypes_are_not_compared():
    """A sweep over a mixed GPU partition resolves bf16 on A100s and fp32 on V100s: FFT and LoRA of
    one seed would then differ in more than the method."""
    from headplast.errors import HeadplastError
    from headplast.steps.runs import check_comparable

    info = {"dir": "a", "model": "m", "subset_fingerprint": "s", "task": "SST-2", "train_dtype": "bfloat16"}
    check_comparable([info, {**info, "dir": "b"}], "compare")
    with pytest.raises(HeadplastError, match="training dtype") as e:
        check_comparable([info, {**info, "dir": "b", "train_dtype": "float32"}], "compare")
    assert "--train-dtype" in e.value.fix
