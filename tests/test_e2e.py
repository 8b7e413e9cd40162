"""The guide's workflow end to end on a tiny random model and a small slice of RTE."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from headplast.orchestration.io import read_jsonl
from tiny import tiny_model_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = ["--max-train-samples", "48", "--num-epochs", "1", "--batch-size", "8", "--eval-size", "24",
         "--max-length", "48", "--learning-rate", "3e-3"]
STATS = ["--n-boot", "300", "--n-perm", "200"]


def _env():
    return {**os.environ, "HEADPLAST": f"{sys.executable} -m headplast", "TQDM_DISABLE": "1"}


def sh(script, *args, cwd):
    r = subprocess.run(["bash", str(REPO / "scripts" / script), *map(str, args)], cwd=cwd, env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{script} {args} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def cli(*args, cwd, ok=True):
    r = subprocess.run([sys.executable, "-m", "headplast", *map(str, args)], cwd=cwd, env=_env(),
                       capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, f"{args} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def _check_run(d: Path, n_heads=8):
    for name in ("importance_pre.jsonl", "importance_post.jsonl", "gradfisher_pre.jsonl", "update.jsonl"):
        rows = read_jsonl(d / name, n_heads)
        assert all(np.isfinite(v) for r in rows for k, v in r.items() if k not in ("kl", "ablation")), name
    heads = pd.read_csv(d / "heads.csv")
    assert len(heads) == n_heads and heads[["I_pre", "I_post", "U", "Urel", "fisher"]].notna().all().all()
    stats = json.loads((d / "stats.json").read_text())
    from scipy.stats import spearmanr
    assert stats["pairs"]["I_pre~U"]["spearman"] == pytest.approx(spearmanr(heads.I_pre, heads.U)[0])
    assert stats["pairs"]["I_pre~I_post"]["spearman"] == pytest.approx(spearmanr(heads.I_pre, heads.I_post)[0])
    cases = json.loads((d / "cases.json").read_text())
    assert cases["n_heads"] == n_heads
    for f in ("fig_I_vs_U.png", "fig_I_vs_G.png", "fig_stats.png", "fig_Ipre_vs_Ipost.png", "fig_Ipost_corrs.png",
              "fig_heatmaps.png"):
        assert (d / f).stat().st_size > 10_000, f
    assert (d / "ckpt_init" / "config.json").exists() and (d / "ckpt_final").exists()


def test_guide_workflow_with_scripts(tmp_path):
    model = tiny_model_dir("bert", tmp_path / "tiny", init=0.3)
    out = tmp_path / "outputs"
    common = ["--model", model, "--output-root", out]
    for seed in (1, 2):
        sh("run_mnli.sh", seed, "RTE", "FFT", *common, *SMALL, cwd=tmp_path)
        sh("measure_mnli.sh", seed, "RTE", "FFT", "--output-root", out, cwd=tmp_path)
        sh("make_plots.sh", seed, "RTE", "--output-root", out, *STATS, cwd=tmp_path)
        for r in (4, 8):
            sh("run_lora.sh", seed, "RTE", r, 2 * r, *common, *SMALL, cwd=tmp_path)
            sh("measure_lora.sh", seed, "RTE", r, "--output-root", out, cwd=tmp_path)
            sh("make_plots_lora.sh", seed, "RTE", r, "--output-root", out, *STATS, cwd=tmp_path)
        text = sh("compare_fft_lora.sh", seed, "RTE", 8, "--output-root", out, *STATS, cwd=tmp_path)
        assert "## 4." in text
    for d in [out / "FFT" / "RTE" / f"seed{s}" for s in (1, 2)] + \
             [out / "LoRA" / "RTE" / f"seed{s}_r{r}" for s in (1, 2) for r in (4, 8)]:
        _check_run(d)
    rc = json.loads((out / "LoRA" / "RTE" / "seed1_r8" / "run_config.json").read_text())
    assert rc["config"]["lora_alpha"] == 16 and rc["config"]["lora_r"] == 8

    cmp_dir = out / "COMPARE" / "RTE" / "seed1"
    m = json.loads((cmp_dir / "compare_metrics.json").read_text())
    fft_stats = json.loads((out / "FFT" / "RTE" / "seed1" / "stats.json").read_text())
    assert m["key_statistics"]["rho(I_pre,U)"]["FFT"] == pytest.approx(fft_stats["pairs"]["I_pre~U"]["spearman"])
    summary = (cmp_dir / "compare_summary.txt").read_text()
    for section in ("## 1. Spearman", "## 2. Top-20 overlap", "## 3. Counter-example counts", "## 4. Main findings"):
        assert section in summary
    for f in ("compare_I_vs_U.png", "compare_stats.png", "compare_update_dist.png", "compare_headwise.png"):
        assert (cmp_dir / f).stat().st_size > 10_000

    cli("aggregate", "--methods", "FFT", "LoRA_r4", "LoRA_r8", "--task", "RTE", "--seeds", 1, 2,
        "--include-collapsed", "--output-root", out, *STATS, cwd=tmp_path)
    agg = out / "MULTI_SEED"
    table = pd.read_csv(agg / "runs_table.csv")
    assert set(table.method) == {"FFT", "LoRA_r4", "LoRA_r8"} and set(table.seed) == {1, 2}
    assert pd.read_parquet(agg / "runs_table.parquet").shape == table.shape
    am = json.loads((agg / "aggregate_metrics.json").read_text())
    vals = table[(table.method == "FFT") & (table.statistic == "rho(I_pre,U)")].value
    assert am["per_method"]["FFT"]["rho(I_pre,U)"]["mean"] == pytest.approx(vals.mean())
    assert "LoRA_r8 - FFT" in am["paired_tests"] and "U" in am["head_agreement"]["FFT"]
    assert (agg / "summary.txt").read_text().count("##") >= 5 and (agg / "multi_seed_stats.png").exists()

    # the guide's module form, run from the repository root
    r = subprocess.run([sys.executable, "-m", "src.analysis.compare_lora_ranks", "--task", "RTE", "--seed", "1",
                        "--ranks", "4", "8", "--out_dir", str(out / "RANK_COMPARISON"), "--output-root", str(out),
                        *STATS], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rk = out / "RANK_COMPARISON"
    rt = pd.read_csv(rk / "rank_table.csv")
    assert rt["rank"].tolist() == [4, 8]
    assert json.loads((rk / "rank_metrics.json").read_text())["fft_reference"] is not None
    assert (rk / "rank_stats.png").exists() and (rk / "rank_update_dist.png").exists()

    # errors name what is missing and how to make it
    r = cli("compare", "--seed", 3, "--output-root", out, cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "does not exist" in r.stderr and "run_mnli.sh 3 RTE FFT" in r.stderr
    r = cli("aggregate", "--methods", "FFT", "--seeds", 1, 7, "--output-root", out, cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "seed 7" in r.stderr


def test_pipeline_on_tiny_model_runs_and_resumes(tmp_path):
    model = tiny_model_dir("roberta", tmp_path / "tiny", init=0.3)
    out = tmp_path / "out"
    args = ["pipeline", "--model", model, "--output-root", out, *SMALL, *STATS]
    r = cli(*args, cwd=tmp_path)
    assert "=== train FFT RTE seed 1" in r.stdout and "## 4. Main findings" in r.stdout
    for d in (out / "FFT" / "RTE" / "seed1", out / "LoRA" / "RTE" / "seed1_r8"):
        _check_run(d)
    assert (out / "COMPARE" / "RTE" / "seed1" / "compare_summary.txt").exists()
    log = json.loads((out / "pipeline_log.json").read_text())
    assert len(log["steps"]) == 7
    again = cli(*args, cwd=tmp_path)  # resumes: everything is up to date
    assert again.stdout.count("skipped") >= 4
