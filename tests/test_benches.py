"""The benchmark scripts run end to end (their figures are not checked: speed is the benchmarks' job)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TQDM_DISABLE": "1", **env})


@pytest.mark.ray  # phase D starts a local Ray instance
def test_gpu_check_on_cpu_runs_every_phase_that_applies(tmp_path):
    """CI's run of the GPU machine's check: phases A-D each passed or skipped with a reason, exit 0."""
    out = tmp_path / "gc.json"
    p = _run(["bench/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)])
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["status"] == "passed" and r["device"]["type"] == "cpu" and r["tiny"]
    assert list(r["phases"]) == ["A", "B", "C", "D"]
    checks = {}
    for key, phase in r["phases"].items():
        assert phase["status"] in ("passed", "skipped") and (phase["status"] == "passed" or phase["reason"]), key
        for c in phase["checks"]:
            assert c["status"] in ("passed", "skipped") and (c["status"] == "passed" or c["reason"]), c
            checks[c["name"]] = c
    # what the CPU can do ran; what needs CUDA or 2 GPUs says so
    ran = ["A.tf32", "A.bf16", "A.trainer_gpus", "A.half_checkpoint_loads_fp32", "A.frozen_weights_move",
           "B.deberta-v2:shared.engine_vs_naive", "B.bert.engine_vs_naive", "B.deberta-v2:shared.default_path",
           "C.model", "C.fft.train", "C.lora.train", "C.fft.measure", "C.lora.measure", "C.engine_vs_naive", "C.decoder_engine", "D.ray"]
    assert {n: checks[n]["status"] for n in ran} == {n: "passed" for n in ran}
    assert "needs CUDA" in checks["B.cross_device"]["reason"]
    assert checks["D.torchrun_2_gpus"]["status"] == "skipped" and "needs 2 GPUs" in checks["D.torchrun_2_gpus"]["reason"]
    assert checks["A.trainer_gpus"]["numbers"]["device=cpu"]["n_gpu"] == 0
    assert checks["C.fft.train"]["numbers"]["steady_s_per_step"] > 0 and checks["C.fft.train"]["numbers"]["theta0_seconds"] > 0
    assert checks["C.fft.measure"]["numbers"]["importance_head_examples_per_s"] > 0
    assert checks["C.fft.measure"]["numbers"]["gradfisher_ms_per_example"] > 0
    dec = checks["C.decoder_engine"]["numbers"]  # grouped-query decoder: engine = naive loop; bf16 reported
    assert dec["rel_diff"] <= 1e-4 and dec["bf16_rel_diff"] > dec["rel_diff"] and dec["speedup"] > 0
    # the table: a row per phase and per check
    assert "B: same numbers on CUDA as on the CPU" in p.stdout and "D.ray" in p.stdout and "PASSED in" in p.stdout


def test_gpu_check_runs_a_subset_and_rejects_an_unknown_phase(tmp_path):
    out = tmp_path / "gc.json"
    p = _run(["bench/gpu_check.py", "--device", "cpu", "--phases", "a", "--out", str(out)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["phases"]["A"]["status"] == "passed" and len(r["phases"]["A"]["checks"]) == 5
    assert all(r["phases"][k]["status"] == "skipped" and "not requested" in r["phases"][k]["reason"] for k in "BCD")
    p = _run(["bench/gpu_check.py", "--device", "cpu", "--phases", "A,E", "--out", str(out)])
    assert p.returncode == 2 and "unknown ['E']" in p.stderr


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    for script in ("bench/gpu_check.py", "bench/bench_gpu.py"):
        p = _run([script, "--out", str(tmp_path / "gc.json")], CUDA_VISIBLE_DEVICES="")
        assert p.returncode == 2 and "no GPU is visible" in p.stderr and "--device cpu --tiny" in p.stderr
        assert not (tmp_path / "gc.json").exists()


def test_bench_train_compares_both_configurations_on_the_same_data(tmp_path, model_dirs):
    extra = ["--model", str(model_dirs["bert"]), "--task", "RTE", "--max-train-samples", "32", "--num-epochs", "1",
             "--batch-size", "8", "--probe-epochs", "5", "--eval-size", "12", "--max-length", "40"]
    p = _run(["bench/bench_train.py", "--measure-examples", "6", "--root", str(tmp_path / "runs"),
              "--out", str(tmp_path / "res"), "--extra", *extra])
    assert p.returncode == 0, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("train speed-up vs plain Trainer: FFT ") and last.endswith("x") and "LoRA" in last
    r = json.loads((tmp_path / "res" / "train.json").read_text())
    runs = {(x["method"], x["config"]): x for x in r["runs"]}
    assert len(runs) == 4
    for m in ("fft", "lora"):
        plain, default = runs[(m, "plain Trainer")], runs[(m, "default")]
        assert plain["train_dtype"] == "float32" and plain["dropout_masks"] == "torch"
        assert default["dropout_masks"] == "numpy" and plain["train_steps"] == default["train_steps"] == 4
        assert default["last_layer_token0"] and not plain["last_layer_token0"]
        assert default["lean_steps"] and not plain["lean_steps"]
    agree = r["dtype_agreement"]
    assert agree["examples"] == 6 and -1 <= agree["spearman"] <= 1 and agree["max_abs_diff"] >= 0
    assert "| FFT | default |" in (tmp_path / "res" / "train.md").read_text()
