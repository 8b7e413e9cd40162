import json
import shutil

import numpy as np
import pytest

from headplast.errors import HeadplastError
from headplast.store.io import read_jsonl
from headplast.measure.config import MeasureConfig
from headplast.steps.measure_step import run_measure
from headplast.train.config import TrainConfig
from headplast.steps.train_step import run_train
from tiny import tiny_run_kwargs

pytestmark = pytest.mark.slow
QUIET = MeasureConfig(progress=False)


@pytest.fixture(scope="module")
def _unmeasured(model_dirs, tmp_path_factory):
    """An FFT and a LoRA run of one θ0, trained and never measured (kept untouched: copied by `fresh`)."""
    root = tmp_path_factory.mktemp("unmeasured")
    kw = tiny_run_kwargs(model_dirs["bert"], root)
    fft = run_train(TrainConfig(method="fft", **kw)).path
    lora = run_train(TrainConfig(method="lora", lora_r=4, lora_alpha=8, **kw)).path
    return root, fft, lora


def _copy_root(unmeasured, to):
    root, fft, lora = unmeasured
    shutil.copytree(root, to)
    return to, to / fft.relative_to(root), to / lora.relative_to(root)


@pytest.fixture(scope="module")
def trained(_unmeasured, tmp_path_factory):
    """The two runs, shared by the tests of this module, which measure them (and alter them) in any
    order: a test asserting what a measurement does must not depend on which ran before it."""
    return _copy_root(_unmeasured, tmp_path_factory.mktemp("runs") / "root")


@pytest.fixture
def fresh(_unmeasured, tmp_path):
    """The two runs as trained, never measured: this test's own copy."""
    return _copy_root(_unmeasured, tmp_path / "root")


def test_measure_fills_run_dirs_and_shares_pre(fresh):
    root, fft, lora = fresh
    t_lora = run_measure(lora, QUIET).timings
    t_fft = run_measure(fft, QUIET).timings
    assert isinstance(t_lora["importance_pre"], float)
    assert t_fft["importance_pre"] == "shared" and t_fft["gradfisher_pre"] == "shared"
    for d in (fft, lora):
        for name, field in (("importance_pre.jsonl", "importance"), ("importance_post.jsonl", "importance"),
                            ("gradfisher_pre.jsonl", "fisher"), ("update.jsonl", "U")):
            rows = read_jsonl(d / name, 8, (field,))
            assert all(np.isfinite(r[field]) for r in rows)
        assert np.load(d / "losses_pre.npy").shape == (12, 9)
        sub = json.loads((d / "eval_subset.json").read_text())
        assert sub["size"] == 12 and sub["seed"] == 999 and sub["split"] == "validation"
    assert (fft / "importance_pre.jsonl").read_bytes() == (lora / "importance_pre.jsonl").read_bytes()
    # post differs from pre once trained, and the update is non-zero
    for d in (fft, lora):
        pre = [r["importance"] for r in read_jsonl(d / "importance_pre.jsonl")]
        post = [r["importance"] for r in read_jsonl(d / "importance_post.jsonl")]
        assert pre != post
        assert np.load(d / "losses_pre.npy")[:, 0].tolist() != np.load(d / "losses_post.npy")[:, 0].tolist()
        assert all(r["U"] > 0 for r in read_jsonl(d / "update.jsonl"))
    again = run_measure(fft, QUIET).timings
    assert set(again.values()) == {"skipped"}


def test_truncated_jsonl_is_detected_and_force_redoes(trained):
    root, fft, lora = trained
    run_measure(fft, QUIET)
    p = fft / "update.jsonl"
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:3]) + '{"layer": 1, "hea')
    with pytest.raises(HeadplastError, match="update.jsonl altered") as e:
        run_measure(fft, QUIET)
    assert f"headplast measure {fft} --force" in str(e.value)
    run_measure(fft, QUIET, force=True)
    assert len(read_jsonl(p, 8, ("U",))) == 8


def test_different_eval_subset_is_an_error(trained):
    root, fft, lora = trained
    run_measure(lora, QUIET)
    with pytest.raises(HeadplastError, match="eval subset differs"):
        run_measure(lora, MeasureConfig(eval_size=10, progress=False))


def test_missing_checkpoints_name_the_train_command(trained, tmp_path):
    root, fft, lora = trained
    broken = tmp_path / "FFT" / "RTE" / "seed1"
    shutil.copytree(fft, broken)
    shutil.rmtree(broken / "ckpt_final")
    with pytest.raises(HeadplastError) as e:
        run_measure(broken, QUIET)
    assert "ckpt_final" in str(e.value) and "headplast train --task RTE --method fft --seed 1" in str(e.value)


def test_adapter_from_another_theta0_is_refused(trained, tmp_path):
    from tiny import tiny_model_dir

    root, fft, lora = trained
    other_model = tiny_model_dir("bert", tmp_path / "other_model", seed=5)  # other pretrained weights
    other = run_train(TrainConfig(task="RTE", model=str(other_model), output_root=str(tmp_path), method="lora",
                                  seed=1, lora_r=4, lora_alpha=8, max_train_samples=32, num_epochs=1,
                                  batch_size=8, probe_epochs=10, eval_size=12, max_length=40)).path
    mixed = tmp_path / "mixed" / "LoRA" / "RTE" / "seed1_r4"
    shutil.copytree(lora, mixed)
    shutil.rmtree(mixed / "ckpt_final")
    shutil.copytree(other / "ckpt_final", mixed / "ckpt_final")
    with pytest.raises(HeadplastError, match=r"ckpt_final/.* was altered, truncated or replaced") as e:
        run_measure(mixed, QUIET, force=True)
    assert "headplast train --task RTE --method lora --seed 1" in str(e.value) and "--force" in str(e.value)


def test_a_new_measurement_is_one_declaration(trained, monkeypatch):
    """Declaring a measurement is enough: the measure step computes, shares and records it, and
    heads.csv, stats.json and the figures' labels pick it up."""
    import pandas as pd
    from dataclasses import dataclass

    from headplast.analysis.config import AnalysisConfig
    from headplast.arch import get_adapter
    from headplast.measure import registry
    from headplast.measure.declare import Measurement
    from headplast.measure.results import HeadTable
    from headplast.measure.update import qkvo_weights
    from headplast.steps.analyse_step import run_analyse

    @dataclass(frozen=True)
    class NormResult(HeadTable):
        w0_norm: np.ndarray

    def head_norms(model):
        ad = get_adapter(model)
        w = qkvo_weights(model, ad)
        return np.array([[np.sqrt(sum(ad.head_weight(w[(l, k)], model.config, k, h).pow(2).sum().item()
                                      for k in "qkvo")) for h in range(4)] for l in range(2)])

    norm = Measurement("w0_norm", NormResult, lambda x: NormResult(head_norms(x.model("theta0", exact=True))),
                       needs=("theta0",), labels={"w0_norm": "||W0_head||"}, pairs=(("I_pre", "w0_norm"),))
    root, fft, lora = trained
    for d in (lora, fft):  # the declared measurements first, whichever tests ran before
        run_measure(d, QUIET)
    monkeypatch.setattr(registry, "MEASUREMENTS", registry.MEASUREMENTS + (norm,))
    t_lora = run_measure(lora, QUIET).timings
    t_fft = run_measure(fft, QUIET).timings
    assert isinstance(t_lora["w0_norm"], float) and t_fft["w0_norm"] == "shared"  # theta0 only: shared
    assert t_fft["importance_pre"] == "skipped"  # the others are untouched
    run_analyse(fft, AnalysisConfig(n_boot=50, n_perm=20))
    from headplast.arch.loading import load_model
    expected = head_norms(load_model(str(fft / "ckpt_init")))
    heads = pd.read_csv(fft / "heads.csv")
    np.testing.assert_allclose(heads["w0_norm"].to_numpy(), expected.ravel(), rtol=1e-6)
    stats = json.loads((fft / "stats.json").read_text())
    assert "I_pre~w0_norm" in stats["pairs"]
    assert (fft / ".steps" / "w0_norm.json").exists()


def _copy(run, tmp_path):
    d = tmp_path / run.parent.parent.name / run.parent.name / run.name
    shutil.copytree(run, d)
    return d


def _refused(argv, capsys, *expected):
    from headplast.cli.main import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headplast: error: ") and "Traceback" not in err
    for e in expected:
        assert e in err, err
    return err


def test_altered_truncated_or_swapped_checkpoints_are_refused(trained, tmp_path, capsys):
    """ckpt_final as training wrote it, or exit 2 naming the file and the command that rebuilds the run."""
    from safetensors.torch import load_file, save_file

    root, fft, lora = trained
    def rebuild(d):  # the command that reproduces the run where it is
        return ["headplast train --task RTE --method fft --seed 1", "--max-train-samples 32", "--num-epochs 1 ",
                f"--output-root {d.parents[2]}", "--force"]
    d = _copy(fft, tmp_path / "altered")  # 64 values of one query weight
    f = d / "ckpt_final" / "model.safetensors"
    w = load_file(f)
    q = next(k for k in w if "query.weight" in k)
    w[q].view(-1)[:64] += 1.0
    save_file(w, f, metadata={"format": "pt"})
    for force in ([], ["--force"]):
        _refused(["measure", d, *force], capsys, "ckpt_final/model.safetensors was altered, truncated or replaced",
                 *rebuild(d))
    d = _copy(fft, tmp_path / "truncated")
    f = d / "ckpt_final" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    for force in ([], ["--force"]):
        _refused(["measure", d, *force], capsys, "ckpt_final/model.safetensors was altered, truncated", *rebuild(d))
    d = _copy(fft, tmp_path / "swapped")  # another valid model in its place
    shutil.rmtree(d / "ckpt_final")
    shutil.copytree(d / "ckpt_init", d / "ckpt_final")
    _refused(["measure", d, "--force"], capsys, "ckpt_final/", "was altered, truncated or replaced", *rebuild(d))
    d = _copy(lora, tmp_path / "swapped_lora")
    a = load_file(d / "ckpt_final" / "adapter_model.safetensors")
    save_file({k: v * 1.5 for k, v in a.items()}, d / "ckpt_final" / "adapter_model.safetensors")
    _refused(["measure", d], capsys, "ckpt_final/adapter_model.safetensors was altered",
             "headplast train --task RTE --method lora --seed 1", "--lora-r 4 --lora-alpha 8")


def test_edited_measurement_files_are_refused_where_read(trained, tmp_path, capsys):
    root, fft, lora = trained
    run_measure(fft, QUIET)
    d = _copy(fft, tmp_path)
    p = d / "importance_pre.jsonl"
    rows = p.read_text().splitlines()
    rows[2] = rows[2].replace('"importance": ', '"importance": 1').replace('"importance": 1-', '"importance": -1')
    p.write_text("\n".join(rows) + "\n")  # still valid JSON, one value changed
    for argv in (["plot", d, "--n-boot", "50", "--n-perm", "20"], ["measure", d]):
        _refused(argv, capsys, "importance_pre.jsonl", "altered, truncated or", f"headplast measure {d} --force")


def test_temporaries_of_a_killed_step_are_removed(trained, tmp_path):
    from headplast.analysis.config import AnalysisConfig
    from headplast.steps.analyse_step import run_analyse

    root, fft, lora = trained
    run_measure(lora, QUIET)
    d = _copy(lora, tmp_path)
    left = [d / ".fig_I_vs_U.png.k3j2x.tmp", d / ".stats.json.a8f1.tmp"]  # as a kill during plotting leaves them
    for p in left:
        p.write_bytes(b"partial")
    run_analyse(d, AnalysisConfig(n_boot=50, n_perm=20))
    assert not any(p.exists() for p in left) and (d / "fig_I_vs_U.png").exists()


def test_further_ablations_get_their_own_files_and_statistics(trained, tmp_path):
    from headplast.analysis.config import AnalysisConfig
    from headplast.steps.analyse_step import run_analyse
    import pandas as pd

    _, fft, _ = trained
    d = tmp_path / "FFT" / "RTE" / "seed1"
    shutil.copytree(fft, d)
    run_measure(d, QUIET)
    t = run_measure(d, MeasureConfig(progress=False, ablation=("zero", "mean", "resample"))).timings
    # the main importance (zero) is up to date; only the variants and nothing else are computed
    assert t["importance_pre"] == "skipped" and t["update_effect"] == "skipped"
    assert all(isinstance(t[f"importance_{w}_{a}"], float) for w in ("post",) for a in ("mean", "resample"))
    assert "importance_pre_zero" not in t
    for name in ("importance_pre_mean", "importance_post_resample"):
        rows = read_jsonl(d / f"{name}.jsonl", 8, ("importance",))
        assert {r["ablation"] for r in rows} == {name.split("_")[-1]}
    resample = [r["importance"] for r in read_jsonl(d / "importance_pre_resample.jsonl")]
    assert resample != [r["importance"] for r in read_jsonl(d / "importance_pre.jsonl")]
    run_analyse(d, AnalysisConfig(n_boot=200, n_perm=100, n_boot_examples=100))
    heads = pd.read_csv(d / "heads.csv")
    assert {"I_pre_mean", "I_post_mean", "I_pre_resample", "I_post_resample"} <= set(heads)
    st = json.loads((d / "stats.json").read_text())
    for pair in ("I_pre~I_pre_mean", "I_pre~I_pre_resample", "I_pre_mean~I_pre_resample", "I_pre_resample~U",
                 "I_post_mean~U", "I_pre_mean~I_post_mean"):
        assert np.isfinite(st["pairs"][pair]["spearman"]) and len(st["pairs"][pair]["ci95"]) == 2, pair
    assert "I_pre_resample" in st["reliability"]
    # measuring with zero alone again keeps the variants (still this run's) and does nothing
    assert set(run_measure(d, QUIET).timings.values()) == {"skipped"}
    assert (d / "importance_pre_mean.jsonl").exists()


def test_ablation_list_is_checked():
    with pytest.raises(HeadplastError, match="unknown ablation 'resampel'.*resample"):
        MeasureConfig(ablation=("zero", "resampel"))
    with pytest.raises(HeadplastError, match="at most once"):
        MeasureConfig(ablation=("zero", "zero"))
    assert MeasureConfig(ablation="zero,mean").ablation == ("zero", "mean")
    assert MeasureConfig(ablation=("mean",)).settings(("ablation",)) == {"ablation": "mean"}


def test_geometry_files_are_recorded_and_intruder_settings_redo_only_them(trained):
    _, fft, lora = trained
    run_measure(lora, QUIET)
    geo = read_jsonl(lora / "update_geometry.jsonl", 8)
    assert all(r["r90_q"] <= 4 and r["srank"] >= 1 for r in geo)  # LoRA r=4 on every module
    assert np.load(lora / "update_bases.npy").shape == (2, 4, 4 * 8, 16)
    rows = [json.loads(line) for line in (lora / "intruders.jsonl").read_text().splitlines()]
    assert [(r["layer"], r["module"]) for r in rows] == [(l, k) for l in range(2) for k in "qkvo"]
    assert all(r["k"] == 10 and len(r["max_cos"]) == 10 for r in rows)
    t = run_measure(lora, MeasureConfig(progress=False, intruder_k=3)).timings
    assert isinstance(t["update_geometry"], float)
    assert {v for k, v in t.items() if k != "update_geometry"} == {"skipped"}
    rows = [json.loads(line) for line in (lora / "intruders.jsonl").read_text().splitlines()]
    assert all(r["k"] == 3 and len(r["max_cos"]) == 3 for r in rows)
    meta = json.loads((lora / "measure_meta.json").read_text())
    assert meta["settings"]["intruder_k"] == 3 and "update_geometry" in meta["measurements"]


def test_measurements_are_ieee_fp32_whatever_the_environment_and_meta_records_how(trained, tmp_path):
    """oneDNN's bf16 math mode set globally (as TF32 is by some containers) rounds fp32 products on
    CPUs with bf16 units; measuring is unaffected bit for bit, and the mode is back afterwards."""
    import torch

    _, fft, _ = trained
    a, b = tmp_path / "a" / "FFT" / "RTE" / "seed1", tmp_path / "b" / "FFT" / "RTE" / "seed1"
    shutil.copytree(fft, a), shutil.copytree(fft, b)
    run_measure(a, QUIET, force=True)
    mk = torch.backends.mkldnn.matmul
    before = mk.fp32_precision
    x, lin = torch.randn(64, 256), torch.nn.Linear(256, 128)
    exact = lin(x)
    mk.fp32_precision = "bf16"
    try:
        if torch.equal(lin(x), exact):
            pytest.skip("this CPU computes fp32 products the same in oneDNN's bf16 mode (no bf16 units)")
        run_measure(b, QUIET, force=True)
        assert mk.fp32_precision == "bf16"
    finally:
        mk.fp32_precision = before
    written = sorted(p.name for p in a.iterdir() if p.suffix in (".jsonl", ".npy"))
    assert {"importance_pre.jsonl", "losses_post.npy", "gradfisher_pre.jsonl", "losses_effect_fwd.npy"} <= set(written)
    for name in written:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    meta = json.loads((b / "measure_meta.json").read_text())
    c = meta["compute"]
    assert c["device"] == "cpu" and c["type"] == "cpu" and c["dtype"] == "float32" and c["processes"] == 1
    assert c["precision"]["mkldnn_matmul"] == "ieee" and c["precision"]["cuda_matmul"] == "ieee"
    assert c["sized_by_device"] == {"max_tokens": 4096, "batch_size": 32}
    assert meta["settings"]["max_tokens"] == 4096 and meta["settings"]["batch_size"] == 32
    run_measure(b, MeasureConfig(progress=False, max_tokens=100), force=True)
    meta = json.loads((b / "measure_meta.json").read_text())
    assert meta["compute"]["sized_by_device"] == {"batch_size": 32} and meta["settings"]["max_tokens"] == 100
    # results do not depend on max_tokens beyond fp32 rounding: it only sets how many heads share a
    # pass, and the size of a product can change its summation order in the last bits
    for name in (n for n in written if n.endswith(".npy")):
        np.testing.assert_allclose(np.load(b / name), np.load(a / name), rtol=1e-5, atol=1e-6, err_msg=name)
    for name in ("importance_pre.jsonl", "importance_post.jsonl", "update_effect.jsonl"):
        for ra, rb in zip(read_jsonl(a / name), read_jsonl(b / name), strict=True):
            for f, v in ra.items():
                if isinstance(v, float):
                    assert v == pytest.approx(rb[f], rel=1e-4, abs=1e-6, nan_ok=True), (name, f)


def test_each_torchrun_rank_measures_on_its_own_gpu(trained, monkeypatch):
    """Every rank gets the same --device; each computes on its LOCAL_RANK GPU, sized for a GPU, and
    the keys of what it computes there name the device type (simulated: no model is moved)."""
    import torch

    from headplast.measure.ablation import IMPORTANCE_PRE
    from headplast.measure.update import UPDATE
    from headplast.steps.measure_step import MeasureContext, _key

    _, fft, _ = trained
    cpu = MeasureContext(fft, QUIET)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = MeasureContext(fft, MeasureConfig(progress=False, device="cuda:0"))
    assert ctx.device == torch.device("cuda", 1)
    assert (ctx.cfg.max_tokens, ctx.cfg.batch_size) == (1 << 16, 64)
    assert _key(IMPORTANCE_PRE, ctx) != _key(IMPORTANCE_PRE, cpu) and _key(UPDATE, ctx) == _key(UPDATE, cpu)
    assert MeasureContext(fft, MeasureConfig(progress=False, device="cpu")).device.type == "cpu"


def test_holdout_records_its_overlap_and_a_legacy_random_holdout_is_replaced(model_dirs, tmp_path):
    """A run measured on a holdout drawn the old way (at random: no holdout_rule in its
    eval_subset.json) is re-measured on the source-disjoint holdout without --force, and
    eval_subset.json records the overlap with the training examples (none)."""
    from headplast.store import layout

    kw = {**tiny_run_kwargs(model_dirs["bert"], tmp_path), "eval_source": "holdout", "eval_size": 12}
    run = run_train(TrainConfig(method="fft", **kw)).path
    assert run_measure(run, MeasureConfig(progress=False)).status == "ran"
    sub = json.loads((run / layout.EVAL_SUBSET).read_text())
    assert sub["holdout_rule"].startswith("source-disjoint") and sub["overlap"]["any"] == 0
    assert sub["overlap"]["training_examples"] == 32 and not sub["seen_in_training"]
    legacy = {k: v for k, v in sub.items() if k not in ("holdout_rule", "overlap")}
    legacy["indices"] = [i + 1 for i in sub["indices"]]  # another draw
    (run / layout.EVAL_SUBSET).write_text(json.dumps(legacy))
    run_measure(run, MeasureConfig(progress=False))  # no "the eval subset differs" error
    assert json.loads((run / layout.EVAL_SUBSET).read_text()) == sub
    (run / layout.EVAL_SUBSET).write_text(json.dumps({**sub, "indices": legacy["indices"]}))
    with pytest.raises(HeadplastError, match="eval subset differs"):  # the same rule, another subset: refused
        run_measure(run, MeasureConfig(progress=False))


def test_a_cpu_node_finds_runs_measured_on_a_gpu_done(model_dirs, tmp_path):
    """Measurement keys name the device type off the CPU; a machine without GPUs looking at a run
    measured on one (measure_meta.json says cuda) finds it up to date rather than measuring it again
    on its CPU. Simulated: the records rewritten with the keys a GPU would have given them."""
    from headplast.measure import registry
    from headplast.steps.measure_step import MeasureContext, _key
    from headplast.store import layout, records

    run = run_train(TrainConfig(method="fft", **tiny_run_kwargs(model_dirs["bert"], tmp_path))).path
    run_measure(run, QUIET)
    ctx = MeasureContext(run, QUIET)
    for m in registry.enabled(ctx.cfg):
        p = records.record_path(run, m.name)
        rec = json.loads(p.read_text())
        p.write_text(json.dumps({**rec, "key": _key(m, ctx, "cuda")}))
    meta = json.loads((run / layout.MEASURE_META).read_text())
    (run / layout.MEASURE_META).write_text(json.dumps({**meta, "compute": {**meta["compute"], "type": "cuda"}}))
    assert run_measure(run, QUIET).status == "skipped"
    # asked for the CPU explicitly, it is measured there
    assert run_measure(run, MeasureConfig(progress=False, device="cpu")).status == "ran"


def test_skipped_measurements_are_added_by_a_later_run(fresh):
    """--skip leaves out measurements a run may lack (the cost of the extended ones); a later measure
    without it computes exactly those, and the analysis reads the run either way."""
    from dataclasses import replace

    from headplast.steps.analyse_step import analysed
    from headplast.analysis.config import AnalysisConfig

    root, fft, lora = fresh
    t = run_measure(fft, replace(QUIET, skip=("update_joint", "func_change"))).timings
    assert "update_joint" not in t and "func_change" not in t and isinstance(t["update_effect"], float)
    assert not (fft / "update_joint.jsonl").exists() and not (fft / "func_change.jsonl").exists()
    cfg = AnalysisConfig(n_boot=50, n_perm=20, n_boot_examples=50)
    df, st, _ = analysed(fft, cfg)
    assert "func_change" not in df and "interactions" not in st
    again = run_measure(fft, QUIET).timings
    assert {k for k, v in again.items() if v != "skipped"} == {"update_joint", "func_change"}
    df, st, _ = analysed(fft, cfg)
    assert {"func_change", "attn_jsd", "layer_joint_fwd"} <= set(df) and "interactions" in st
    with pytest.raises(HeadplastError, match="--skip update: every run has it"):
        MeasureConfig(skip=("update",))


def test_the_extended_measures_read_a_fixed_sample_of_the_eval_examples(fresh, monkeypatch):
    """--extended-examples n: update_joint's rows are the losses of the same examples measured on all
    of them (joint_examples.npy names them), the analysis pairs them with those rows of effect_fwd,
    and changing n re-measures only the two extended measures."""
    from dataclasses import replace

    from headplast.analysis.config import AnalysisConfig
    from headplast.analysis.interactions import interactions
    from headplast.measure.config import extended_indices
    from headplast.steps.analyse_step import analysed

    import headplast.measure.funcchange as fc

    seen = []
    real = fc.function_sums
    monkeypatch.setattr(fc, "function_sums", lambda m0, m1, ad, enc, *a, **k: seen.append(enc) or real(m0, m1, ad, enc,
                                                                                                           *a, **k))
    root, fft, lora = fresh
    run_measure(fft, replace(QUIET, extended_examples=0))
    every = np.load(fft / "losses_joint_fwd.npy")
    N = len(every)
    assert (np.load(fft / "joint_examples.npy") == np.arange(N)).all()
    n = N // 3
    t = run_measure(fft, replace(QUIET, extended_examples=n)).timings
    assert {k for k, v in t.items() if v != "skipped"} == {"update_joint", "func_change"}
    idx = np.load(fft / "joint_examples.npy")
    assert (idx == extended_indices(N, n)).all() and len(set(idx)) == n and (np.diff(idx) > 0).all()
    assert np.allclose(np.load(fft / "losses_joint_fwd.npy"), every[idx], atol=1e-5)
    assert len(seen) == 2 and len(seen[0]) == N  # func_change read every example, then the same sample
    assert seen[1].features == [seen[0].features[i] for i in idx] and (seen[1].labels == seen[0].labels[idx]).all()
    _, st, _ = analysed(fft, AnalysisConfig(n_boot=50, n_perm=20, n_boot_examples=50))
    fwd = np.load(fft / "losses_effect_fwd.npy")
    assert st["interactions"]["n_examples"] == n
    assert st["interactions"] == interactions(np.load(fft / "losses_joint_fwd.npy"), fwd[idx])
    assert (extended_indices(10, 0) == np.arange(10)).all() and (extended_indices(10, 50) == np.arange(10)).all()


@pytest.mark.parametrize("cmd", [["pipeline"], ["measure", "RUN"], ["sweep"]])
def test_skip_is_a_flag_of_every_command_that_measures(cmd):
    from headplast.cli.main import _measure_config, build_parser

    a = build_parser().parse_args([*cmd, "--skip", "update_joint,func_change"])
    assert _measure_config(a).skip == ("update_joint", "func_change")
