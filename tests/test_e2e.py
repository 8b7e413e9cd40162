"""The guide's workflow end to end on a tiny random model and a small slice of RTE.

Each guide script (and the guide's module entry points) runs once as a real subprocess;
everything else calls `headplast.cli.main.main` in-process, which is the same code path.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from headplast.cli.main import main
from headplast.measure import registry
from headplast.store import layout
from headplast.store.io import read_jsonl
from outputs import results
from tiers import slow_except
from tiny import DECODERS, tiny_model_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = ["--max-train-samples", "48", "--num-epochs", "1", "--train-batch-size", "8", "--eval-size", "24",
         "--max-length", "48", "--learning-rate", "3e-3", "--probe-epochs", "20"]
STATS = ["--n-boot", "300", "--n-perm", "200"]
RUN_PANELS = {"fig_I_vs_U.png": 2, "fig_I_vs_G.png": 4, "fig_stats.png": 2, "fig_Ipre_vs_Ipost.png": 1,
              "fig_Ipost_corrs.png": 2, "fig_heatmaps.png": 3, "fig_effect.png": 2,
              "fig_change_measures.png": 5}
COMPARE_PANELS = {"compare_I_vs_U.png": 2, "compare_stats.png": 4, "compare_update_dist.png": 3,
                  "compare_headwise.png": 3, "compare_subspace.png": 2}


def panels(path) -> int:
    with Image.open(path) as im:
        return int(im.info["Description"].split("=")[1])


def _env():
    return {**os.environ, "HEADPLAST": f"{sys.executable} -m headplast", "TQDM_DISABLE": "1"}


def sh(script, *args, cwd):
    r = subprocess.run(["bash", str(REPO / "scripts" / script), *map(str, args)], cwd=cwd, env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{script} {args} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def cli(*args, capsys=None):
    rc = main([str(a) for a in args])
    assert rc == 0, capsys.readouterr().err if capsys else rc
    return capsys.readouterr().out if capsys else ""


def _check_run(d: Path, n_heads=8):
    for m in registry.required():
        rows = read_jsonl(d / m.file, n_heads, m.fields)
        assert all(np.isfinite(r[f]) for r in rows for f in m.fields if f != "kl"), m.name
    heads = pd.read_csv(d / "heads.csv")
    assert len(heads) == n_heads and heads[["I_pre", "I_post", "U", "Urel", "fisher"]].notna().all().all()
    stats = json.loads((d / "stats.json").read_text())
    from scipy.stats import spearmanr
    assert stats["pairs"]["I_pre~U"]["spearman"] == pytest.approx(spearmanr(heads.I_pre, heads.U)[0])
    assert stats["pairs"]["I_pre~I_post"]["spearman"] == pytest.approx(spearmanr(heads.I_pre, heads.I_post)[0])
    assert json.loads((d / "cases.json").read_text())["n_heads"] == n_heads
    for f, n in RUN_PANELS.items():
        assert panels(d / f) == n, f
    assert (d / "ckpt_init" / "config.json").exists() and (d / "ckpt_final").exists()


def test_guide_workflow_with_scripts(tmp_path, capsys):
    model = tiny_model_dir("bert", tmp_path / "tiny", init=0.3)
    out = tmp_path / "outputs"
    common = ["--model", model, "--output-root", out]
    sh("run_mnli.sh", 1, "RTE", "FFT", *common, *SMALL, cwd=tmp_path)
    sh("measure_mnli.sh", 1, "RTE", "FFT", "--output-root", out, cwd=tmp_path)
    sh("make_plots.sh", 1, "RTE", "--output-root", out, *STATS, cwd=tmp_path)
    sh("run_lora.sh", 1, "RTE", 8, 16, *common, *SMALL, cwd=tmp_path)
    sh("measure_lora.sh", 1, "RTE", 8, "--output-root", out, cwd=tmp_path)
    sh("make_plots_lora.sh", 1, "RTE", 8, "--output-root", out, *STATS, cwd=tmp_path)
    text = sh("compare_fft_lora.sh", 1, "RTE", 8, "--output-root", out, *STATS, cwd=tmp_path)
    assert "## 4." in text
    # a second seed and rank, in-process
    cli("train", "--task", "RTE", "--method", "fft", "--seed", 2, *common, *SMALL)
    cli("measure", "--task", "RTE", "--method", "fft", "--seed", 2, "--output-root", out)
    cli("plot", "--task", "RTE", "--seed", 2, "--output-root", out, *STATS)
    for seed in (1, 2):
        cli("train", "--task", "RTE", "--method", "lora", "--seed", seed, "--lora-r", 4, "--lora-alpha", 8, *common, *SMALL)
        cli("measure", "--task", "RTE", "--method", "lora", "--seed", seed, "--lora-r", 4, "--output-root", out)
        cli("plot", "--task", "RTE", "--seed", seed, "--method-label", "LoRA_r4", "--output-root", out, *STATS)
    cli("train", "--task", "RTE", "--method", "lora", "--seed", 2, "--lora-r", 8, "--lora-alpha", 16, *common, *SMALL)
    cli("measure", "--task", "RTE", "--method", "lora", "--seed", 2, "--lora-r", 8, "--output-root", out)
    for d in [out / "FFT" / "RTE" / f"seed{s}" for s in (1, 2)] + [out / "LoRA" / "RTE" / "seed1_r8"] + \
             [out / "LoRA" / "RTE" / f"seed{s}_r4" for s in (1, 2)]:
        _check_run(d)
    rc = json.loads((out / "LoRA" / "RTE" / "seed1_r8" / "run_config.json").read_text())
    assert rc["config"]["lora_alpha"] == 16 and rc["config"]["lora_r"] == 8

    cmp_dir = out / "COMPARE" / "RTE" / "seed1"
    m = json.loads((cmp_dir / "compare_metrics.json").read_text())
    fft_stats = json.loads((out / "FFT" / "RTE" / "seed1" / "stats.json").read_text())
    assert m["labels"] == ["FFT", "LoRA_r8"]
    assert m["key_statistics"]["rho(I_pre,U)"]["FFT"] == pytest.approx(fft_stats["pairs"]["I_pre~U"]["spearman"])
    summary = (cmp_dir / "compare_summary.txt").read_text()
    for section in ("## 1. Spearman", "## 2. Top-20 overlap", "## 3. Counter-example counts", "## 4. Update effect",
                    "## 5. Circuit updates", "## 6. Functional change", "## 7. What importance adds beyond the gradient",
                    "## 8. Shape of the updates", "## 9. Main findings"):
        assert section in summary
    for f, n in COMPARE_PANELS.items():
        assert panels(cmp_dir / f) == n, f

    cli("aggregate", "--methods", "FFT", "LoRA_r4", "--task", "RTE", "--seeds", 1, 2, "--include-collapsed",
        "--output-root", out, *STATS)
    agg = out / "MULTI_SEED"
    table = pd.read_csv(agg / "runs_table.csv")
    assert set(table.method) == {"FFT", "LoRA_r4"} and set(table.seed) == {1, 2}
    assert pd.read_parquet(agg / "runs_table.parquet").shape == table.shape
    am = json.loads((agg / "aggregate_metrics.json").read_text())
    vals = table[(table.method == "FFT") & (table.statistic == "rho(I_pre,U)")].value
    assert am["per_method"]["FFT"]["rho(I_pre,U)"]["mean"] == pytest.approx(np.tanh(np.arctanh(vals).mean()))
    assert "LoRA_r4 - FFT" in am["paired_tests"] and "U" in am["head_agreement"]["FFT"]
    assert (agg / "summary.txt").read_text().count("##") >= 5 and panels(agg / "multi_seed_stats.png") == 9

    # the guide's module forms, run from the repository root
    for module, args in (("src.analysis.compare_lora_ranks", ["--seed", "1", "--ranks", "4", "8", "--out_dir",
                                                               str(out / "RANK_COMPARISON")]),
                         ("src.analysis.aggregate_seeds", ["--methods", "FFT", "LoRA_r4", "--seeds", "1", "2",
                                                           "--include-collapsed", "--out_dir", str(out / "MS2")])):
        r = subprocess.run([sys.executable, "-m", module, "--task", "RTE", "--output-root", str(out), *args,
                            *STATS], cwd=REPO, env=_env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "MS2" / "summary.txt").read_text() == (agg / "summary.txt").read_text()
    rk = out / "RANK_COMPARISON"
    assert pd.read_csv(rk / "rank_table.csv")["rank"].tolist() == [4, 8]
    assert json.loads((rk / "rank_metrics.json").read_text())["fft_reference"] is not None
    assert panels(rk / "rank_stats.png") == 9 and panels(rk / "rank_update_dist.png") == 1

    # errors name what is missing and how to make it
    assert main(["compare", "--seed", "3", "--output-root", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "run_mnli.sh 3 RTE FFT" in err
    assert main(["aggregate", "--methods", "FFT", "--seeds", "1", "7", "--output-root", str(out)]) == 2
    assert "seed 7" in capsys.readouterr().err


def _statuses(out: Path) -> dict:
    return {s["step"]: s["status"] for s in json.loads((out / layout.PIPELINE_LOG).read_text())["steps"]}


def _run_until(args, marker: str, delay: float, cwd) -> None:
    """Start `headplast ARGS` and kill -9 it `delay` seconds after it prints `marker`."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "headplast", *map(str, args)], cwd=cwd, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if line.startswith(marker):
            time.sleep(delay)
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()


def _tree(root: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.name != layout.PIPELINE_LOG}


def _rerun_read_only(args, a: Path, tmp_path, capsys):
    """Finished results are only read on a rerun: nothing is written, so a read-only copy works."""
    before = _tree(a)
    cli(*args, "--output-root", a, capsys=capsys)
    assert _tree(a) == before
    ro = tmp_path / "read_only"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(a), str(ro)], capture_output=True).returncode != 0:
        return  # no bind mounts here (not root): the snapshot above is the check
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)]).returncode == 0
        text = cli(*args, "--output-root", ro, capsys=capsys)
        assert "not updating" in text and "=== compare FFT vs LoRA_r8" in text
        assert main([*map(str, args[:-4]), "--n-boot", "302", "--n-perm", "200", "--output-root", str(ro)]) == 2
        err = capsys.readouterr().err
        assert "is read-only, and this step has to write there" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", str(ro)])


def test_pipeline_runs_resumes_and_survives_kill_9(tmp_path, capsys):
    """The default pipeline (SST-2: its recipe measures on a train holdout) on a tiny model."""
    model = tiny_model_dir("roberta", tmp_path / "tiny", init=0.3)
    args = ["pipeline", "--model", model, "--ranks", 4, 8, *SMALL, *STATS]
    a = tmp_path / "a"
    text = cli(*args, "--output-root", a, capsys=capsys)
    assert "=== train FFT SST-2 seed 1" in text
    answer = text[text.index("ANSWER (SST-2, seed 1)"):].splitlines()
    assert answer[1].startswith("  FFT: across heads, ") and "ρ(I_pre, U) = " in answer[1]
    assert "within layers, " in answer[1]
    assert answer[2].startswith("  LoRA_r4: ") and answer[3].startswith("  FFT vs LoRA_r4: ")
    for d in (a / "FFT" / "SST-2" / "seed1", a / "LoRA" / "SST-2" / "seed1_r4", a / "LoRA" / "SST-2" / "seed1_r8"):
        _check_run(d)
    rc = json.loads((a / "FFT" / "SST-2" / "seed1" / "run_config.json").read_text())
    assert rc["config"]["eval_source"] == "holdout" and rc["defaults"]["filled"]["eval_source"] == "SST-2 recipe"
    assert "num_epochs" not in rc["defaults"]["filled"] and "tuning set" in rc["defaults"]["why"]  # given: kept
    for r in (4, 8):  # one comparison per rank (only the first was written before)
        m = json.loads((a / "COMPARE" / "SST-2" / f"seed1_r{r}" / "compare_metrics.json").read_text())
        assert m["labels"] == ["FFT", f"LoRA_r{r}"]
    first = _statuses(a)
    assert len(first) == 13 and set(first.values()) == {"ran"}  # 12 steps and the report
    cli(*args, "--output-root", a, capsys=capsys)  # resumes: every step is up to date
    assert _statuses(a) == dict.fromkeys(first, "skipped")

    # killed during LoRA training, then during a measurement, then run to the end: same results
    b = tmp_path / "b"
    _run_until([*args, "--output-root", b], "=== train LoRA_r4", 1.0, tmp_path)
    _run_until([*args, "--output-root", b], "=== measure LoRA_r8", 1.5, tmp_path)
    cli(*args, "--output-root", b, capsys=capsys)
    ra, rb = results(a), results(b)
    assert ra.keys() == rb.keys() and len(ra) > 30
    assert [k for k in ra if ra[k] != rb[k]] == []
    assert not [p for p in b.rglob(".*.tmp")]  # no temporary file left behind
    assert not list(b.rglob(".*.lock"))  # the locks the killed runs left were recovered, then released

    # two pipelines at once on one root: one waits for the other, the results are those of one run
    c = tmp_path / "c"
    procs = [subprocess.Popen([sys.executable, "-m", "headplast", *map(str, args), "--output-root", str(c)],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [t[-3000:] for t in logs]
    assert any("waiting: " in t and "is in use by pid" in t for t in logs)
    rc_ = results(c)
    assert [k for k in ra if ra[k] != rc_.get(k)] == [] and rc_.keys() == ra.keys()

    _rerun_read_only(args, a, tmp_path, capsys)

    # a changed analysis setting re-runs exactly the analysis steps
    cli(*args[:-4], "--n-boot", "301", "--n-perm", "200", "--output-root", a, capsys=capsys)
    st = _statuses(a)
    assert {k for k, v in st.items() if v == "ran"} == {k for k in first if k.startswith(("plot", "compare", "ranks", "report"))}


@pytest.mark.parametrize("arch", slow_except(DECODERS, "llama"))
def test_pipeline_runs_on_every_decoder_family(arch, tmp_path, capsys):
    """FFT and LoRA, measure, compare and report on a tiny decoder whose tokenizer, like GPT-2's and
    Llama's, has no pad token: padded with EOS, the classifier reads each example's last token."""
    from safetensors.torch import load_file

    model = tiny_model_dir(arch, tmp_path / "tiny", init=0.3)
    a = tmp_path / "a"
    text = cli("pipeline", "--model", model, "--ranks", 4, *SMALL, *STATS, "--output-root", a, capsys=capsys)
    assert "ANSWER (SST-2, seed 1)" in text and "  LoRA_r4: across heads, " in text
    fft, lora = a / "FFT" / "SST-2" / "seed1", a / "LoRA" / "SST-2" / "seed1_r4"
    for d in (fft, lora):
        _check_run(d)
    rc = json.loads((lora / "run_config.json").read_text())
    assert rc["model"]["reads"] == "last non-padding token" and rc["model"]["pad_is_eos"]
    assert rc["model"]["pad_token_id"] == 4 and rc["model"]["padding_side"] == "right"
    assert json.loads((fft / "ckpt_init" / "config.json").read_text())["pad_token_id"] == 4  # theta0 knows it
    names = ("transformer.h.{}.attn.c_attn", "transformer.h.{}.attn.c_proj") if arch == "gpt2" else \
        tuple(f"model.layers.{{}}.self_attn.{k}_proj" for k in "qkvo")
    assert sorted(rc["adapted_modules"]) == sorted(n.format(l) for l in range(2) for n in names)
    saved = load_file(str(lora / "ckpt_final" / "adapter_model.safetensors"))
    assert "base_model.model.score.weight" in saved  # the trained classifier is saved with the adapter
    assert (a / "COMPARE" / "SST-2" / "seed1" / "compare_metrics.json").exists() and (a / "report.html").exists()
    # grouped-query families (gemma: one K/V head for 4; llama, qwen2, mistral: 2 for 4) get K/V-group statistics
    groups = json.loads((lora / "stats.json").read_text()).get("kv_groups")
    if arch == "gpt2":
        assert groups is None and "K/V groups (" not in (a / "report.html").read_text()
    else:
        G = 4 if arch == "gemma" else 2
        assert groups["group_size"] == G and groups["n_groups"] == 2 * 4 // G
        assert "I_pre~U_k" in groups["pairs"] and f"{G} query heads per K/V head" in (a / "report.html").read_text()
        assert rc["model"]["kv_group_size"] == G
    if arch == "llama":  # the groups' own measurements, added to a measured run, flow to the table and statistics
        cli("measure", lora, "--kv-group-effect", capsys=capsys)
        cli("plot", lora, *STATS, capsys=capsys)
        heads = (lora / "heads.csv").read_text().splitlines()[0].split(",")
        assert {"group_I_pre", "group_I_post", "group_effect_fwd", "group_effect_rev"} <= set(heads)
        pairs = json.loads((lora / "stats.json").read_text())["kv_groups"]["pairs"]
        assert {"group_I_pre~U_k", "group_I_pre~group_effect_fwd", "I_pre~group_effect_fwd"} <= set(pairs)
