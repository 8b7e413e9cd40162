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


def test_bench_gpu_runs_on_cpu_tiny_and_reports_every_figure(tmp_path):
    p = _run(["bench/bench_gpu.py", "--device", "cpu", "--tiny", "--out", str(tmp_path / "gpu.json")])
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert r["device"] == "cpu" and r["tiny"] and r["model"]["layers"] == 2
    for method in ("fft", "lora"):
        assert r[method]["train"]["examples_per_s"] > 0 and r[method]["train"]["train_dtype"] == "bfloat16"
        timings = r[method]["measure"]["seconds"]
        assert {"importance_pre", "importance_post", "gradfisher_pre", "update", "update_effect"} <= set(timings)
    assert r["lora"]["measure"]["seconds"]["importance_pre"] == "shared"  # theta0's, from the FFT run
    nv = r["naive_vs_engine"]
    assert nv["examples"] == 8 and nv["max_abs_diff"] < 1e-5 and nv["naive"]["seconds"] > 0


def test_bench_gpu_without_a_gpu_says_so(tmp_path):
    p = _run(["bench/bench_gpu.py", "--out", str(tmp_path / "gpu.json")], CUDA_VISIBLE_DEVICES="")
    assert p.returncode == 2 and "no GPU is visible" in p.stderr and "--device cpu --tiny" in p.stderr
    assert not (tmp_path / "gpu.json").exists()


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
