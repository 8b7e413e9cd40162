"""plot, compare, aggregate and ranks end to end on synthetic run directories."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from headplast.cli.main import main
from synthetic import make_run

FAST = ["--n-boot", "300", "--n-perm", "100"]


def panels(path) -> int:
    with Image.open(path) as im:
        return int(im.info["Description"].split("=")[1])


@pytest.fixture
def runs(tmp_path):
    for seed in (1, 2, 3):
        make_run(tmp_path, "FFT", seed, coupling=1.0)
        for r in (4, 8):
            make_run(tmp_path, f"LoRA_r{r}", seed, coupling=0.2, collapsed=(seed == 3 and r == 4))
    return tmp_path


def test_plot_writes_tables_and_figures(runs, capsys):
    assert main(["plot", "--task", "RTE", "--seed", "1", "--method-label", "LoRA_r8", "--output-root", str(runs),
                 *FAST]) == 0
    d = runs / "LoRA" / "RTE" / "seed1_r8"
    heads = pd.read_csv(d / "heads.csv")
    assert len(heads) == 24 and {"I_pre", "I_post", "U", "Urel", "fisher", "taylor", "I_pre_se"} <= set(heads)
    st = json.loads((d / "stats.json").read_text())
    assert len(st["pairs"]) == 22 and st["n_boot"] == 300 and "I_pre" in st["reliability"]
    rel = st["reliability"]["func_change"]  # from its values on halves of the eval data (Schema.halves)
    assert rel["n_splits"] == 6 and 0 < rel["reliability"] <= 1
    assert st["pairs"]["I_pre~func_change"]["beyond"]["given"] == ["grad_norm", "W0", "layer"]
    assert {"U~effect_fwd", "I_pre~effect_fwd", "I_post~effect_rev", "U~effect_rev"} <= set(st["pairs"])
    assert {"effect_fwd", "effect_rev"} <= set(st["reliability"])
    cases = json.loads((d / "cases.json").read_text())
    assert cases["n_heads"] == 24
    for kind in ("moved_but_inert", "small_but_decisive"):  # recomputed here from the heads table
        assert cases[kind]["expected_if_independent"] == pytest.approx(round(0.2 * 24) * round(0.5 * 24) / 24)
    top_u = set(heads.U.rank(ascending=False, method="first").le(round(0.2 * 24)).to_numpy().nonzero()[0])
    low_e = set(heads.effect_fwd.abs().rank(method="first").le(12).to_numpy().nonzero()[0])
    inert = {(int(heads["layer"][i]), int(heads["head"][i])) for i in top_u & low_e}
    assert {(c["layer"], c["head"]) for c in cases["moved_but_inert"]["heads"]} == inert
    expected = {"fig_I_vs_U.png": 2, "fig_I_vs_G.png": 4, "fig_stats.png": 2, "fig_Ipre_vs_Ipost.png": 1,
                "fig_Ipost_corrs.png": 2, "fig_heatmaps.png": 3, "fig_effect.png": 2,
                "fig_change_measures.png": 5}
    for name, n in expected.items():
        assert panels(d / name) == n, name


@pytest.mark.slow
def test_compare_writes_every_file(runs, capsys):
    assert main(["compare", "--seed", "2", "--lora-r", "4", "--output-root", str(runs), *FAST]) == 0
    d = runs / "COMPARE" / "RTE" / "seed2"
    for name, n in {"compare_I_vs_U.png": 2, "compare_stats.png": 4, "compare_update_dist.png": 3,
                    "compare_headwise.png": 3, "compare_subspace.png": 2}.items():
        assert panels(d / name) == n, name
    m = json.loads((d / "compare_metrics.json").read_text())
    assert m["labels"] == ["FFT", "LoRA_r4"] and set(m["stats"]) == {"FFT", "LoRA_r4"}
    k = m["key_statistics"]["rho(I_pre,U)"]
    assert k["difference"] == pytest.approx(k["LoRA_r4"] - k["FFT"]) and isinstance(k["exceeds_uncertainty"], bool)
    assert k["ci95"][0] <= k["difference"] <= k["ci95"][1]
    text = (d / "compare_summary.txt").read_text()
    assert "## 6. Functional change" in text and "## 7. What importance adds beyond" in text
    assert "## 9. Main findings" in text and f"{k['FFT']:.4f}" in text
    sub = m["subspace"]  # phi recomputed here head by head; the noise floor is seed 1 (lowest other seed)
    b = {(lab, s): np.load(runs / sub_dir / "update_bases.npy")[..., :8] for lab, s, sub_dir in
         (("FFT", 2, "FFT/RTE/seed2"), ("LoRA", 2, "LoRA/RTE/seed2_r4"), ("FFT", 1, "FFT/RTE/seed1"))}
    assert sub["noise_seed"] == 1 and sub["k"] == 8 and len(sub["per_head"]) == 24
    rank = {key: (np.abs(v).sum(-2) > 0).sum(-1) for key, v in b.items()}  # zero columns beyond a head's rank
    for row in sub["per_head"]:
        l, h = row["layer"], row["head"]
        fft, lora, fft1 = b[("FFT", 2)][l, h], b[("LoRA", 2)][l, h], b[("FFT", 1)][l, h]
        phi = np.linalg.norm(fft.T @ lora) ** 2 / min(rank[("FFT", 2)][l, h], rank[("LoRA", 2)][l, h])
        floor = np.linalg.norm(fft.T @ fft1) ** 2 / min(rank[("FFT", 2)][l, h], rank[("FFT", 1)][l, h])
        energy = [((fft[p * 8:(p + 1) * 8] ** 2).sum(), (lora[p * 8:(p + 1) * 8] ** 2).sum()) for p in range(4)]
        null = sum(x * y for x, y in energy) / (8 * min(rank[("FFT", 2)][l, h], rank[("LoRA", 2)][l, h]))
        assert row["phi"] == pytest.approx(phi) and row["floor_FFT"] == pytest.approx(floor)
        assert row["null"] == pytest.approx(null)
    assert sub["random_within_parts"]["mean"] == pytest.approx(np.mean([r["null"] for r in sub["per_head"]]))
    assert "chance keeping each part's share" in text
    assert sub["random_subspaces"] == 8 / 32 and sub["rho_I_pre_phi"]["ci95"][0] <= sub["rho_I_pre_phi"]["spearman"]
    assert "subspace overlap" in text and "noise floor, LoRA_r4 seed 2 vs seed 1" in text
    shape = m["update_shape"]["FFT"]
    rows = [json.loads(x) for x in (runs / "FFT/RTE/seed2/intruders.jsonl").read_text().splitlines()]
    adapted = [r for r in rows if any(c != 1 for c in r["max_cos"])]  # a matrix not adapted has every max_cos 1
    assert shape["intruders"] == sum(r["intruders"] for r in rows) and shape["vectors_examined"] == 10 * len(adapted)
    lora_rows = [json.loads(x) for x in (runs / "LoRA/RTE/seed2_r4/intruders.jsonl").read_text().splitlines()]
    assert m["update_shape"]["LoRA_r4"]["matrices_adapted"] == sum(any(c != 1 for c in r["max_cos"]) for r in lora_rows)


@pytest.mark.slow
def test_compare_without_a_second_seed_says_so(tmp_path, capsys):
    make_run(tmp_path, "FFT", 1)
    make_run(tmp_path, "LoRA_r8", 1)
    assert main(["compare", "--output-root", str(tmp_path), *FAST]) == 0
    m = json.loads((tmp_path / "COMPARE/RTE/seed1/compare_metrics.json").read_text())
    assert m["subspace"]["noise_floor"] == {} and "no noise floor" in m["subspace"]["note"]
    assert main(["compare", "--output-root", str(tmp_path), "--noise-seed", "2", *FAST]) == 2
    assert "no measured runs FFT and LoRA_r8 of that seed" in capsys.readouterr().err


@pytest.mark.slow
def test_aggregate_and_ranks(runs, capsys):
    assert main(["aggregate", "--methods", "FFT", "LoRA_r4", "--seeds", "1", "2", "3", "--output-root", str(runs),
                 *FAST]) == 0
    d = runs / "MULTI_SEED"
    m = json.loads((d / "aggregate_metrics.json").read_text())
    assert m["collapsed_runs"] == [{"method": "LoRA_r4", "seed": 3}]
    assert m["per_method"]["LoRA_r4"]["rho(I_pre,U)"]["n"] == 2  # the collapsed seed is excluded
    assert m["per_method"]["FFT"]["rho(I_pre,U)"]["n"] == 3
    assert panels(d / "multi_seed_stats.png") == 9 and (d / "runs_table.parquet").exists()
    assert "Collapsed runs (excluded)" in (d / "summary.txt").read_text()
    assert main(["ranks", "--seed", "1", "--ranks", "4", "8", "--output-root", str(runs), *FAST]) == 0
    rk = runs / "RANK_COMPARISON"
    assert pd.read_csv(rk / "rank_table.csv")["trainable_params"].tolist() == [4000, 8000]
    assert panels(rk / "rank_stats.png") == 9 and panels(rk / "rank_update_dist.png") == 1


def test_runs_on_different_subsets_or_models_are_not_compared(tmp_path, capsys):
    make_run(tmp_path, "FFT", 1)
    make_run(tmp_path, "LoRA_r8", 1, subset="fp-B")
    assert main(["compare", "--output-root", str(tmp_path), *FAST]) == 2
    assert "different eval subsets" in capsys.readouterr().err
    make_run(tmp_path, "LoRA_r8", 1, model="other-model")
    assert main(["compare", "--output-root", str(tmp_path), *FAST]) == 2
    assert "different models" in capsys.readouterr().err


def test_missing_measurement_names_the_command(tmp_path, capsys):
    d = make_run(tmp_path, "FFT", 1)
    (d / "update.jsonl").unlink()
    assert main(["plot", str(d)]) == 2
    err = capsys.readouterr().err
    assert "update.jsonl is missing" in err and f"headplast measure {d}" in err


@pytest.mark.slow
def test_aggregate_when_every_run_of_a_method_collapsed(tmp_path, capsys):
    """np.stack of an empty list crashed here; now it writes what it can and says why."""
    for seed in (1, 2):
        make_run(tmp_path, "FFT", seed)
        make_run(tmp_path, "LoRA_r8", seed, collapsed=True, val_metric=0.5)
    assert main(["aggregate", "--seeds", "1", "2", "--output-root", str(tmp_path), *FAST]) == 0
    m = json.loads((tmp_path / "MULTI_SEED" / "aggregate_metrics.json").read_text())
    assert m["methods_without_runs"] == ["LoRA_r8"] and m["per_method"]["LoRA_r8"] == {}
    assert m["per_method"]["FFT"]["rho(I_pre,U)"]["n"] == 2
    assert [e["seed"] for e in m["excluded_runs"]] == [1, 2]
    assert all("no better than the majority class" in e["reason"] for e in m["excluded_runs"])
    text = (tmp_path / "MULTI_SEED" / "summary.txt").read_text()
    assert "LoRA_r8: no run left to aggregate" in text and "excluded LoRA_r8 seed 1: collapsed" in text


@pytest.mark.slow
def test_compare_uncertainty_is_the_wider_of_heads_and_examples(runs, capsys):
    assert main(["compare", "--seed", "1", "--output-root", str(runs), *FAST]) == 0
    m = json.loads((runs / "COMPARE" / "RTE" / "seed1" / "compare_metrics.json").read_text())
    for name in ("rho(I_pre,U)", "rho(I_post,U)", "rho(I_pre,I_post)"):
        d = m["key_statistics"][name]
        (lo, hi), (hl, hh), (el, eh) = d["ci95"], d["ci95_heads"], d["ci95_examples"]
        assert lo == min(hl, el) and hi == max(hh, eh)
        assert d["exceeds_uncertainty"] == (lo > 0 or hi < 0)
    for s in m["stats"].values():
        for name, p in s["pairs"].items():  # a pair with per-example values: both CIs
            if set(name.split("~")) & {"I_pre", "I_post", "effect_fwd", "effect_rev"}:
                assert len(p["ci95_examples"]) == 2 and len(p["ci95"]) == 2, name
            else:  # U vs func_change: neither is a mean over examples
                assert "ci95_examples" not in p and len(p["ci95_layers"]) == 2, name
            d = p.get("disattenuated")
            assert d is None or np.isnan(d) or -1 <= d <= 1
        for r in s["reliability"].values():
            assert -1 <= r["reliability"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("fmt,magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_vector_figures(runs, fmt, magic):
    assert main(["plot", str(runs / "FFT/RTE/seed1"), "--figure-format", fmt, *FAST]) == 0
    assert main(["compare", "--seed", "1", "--lora-r", "4", "--output-root", str(runs), "--figure-format", fmt,
                 *FAST]) == 0
    for d, names in ((runs / "FFT/RTE/seed1", ("fig_I_vs_U", "fig_heatmaps", "fig_effect")),
                     (runs / "COMPARE/RTE/seed1", ("compare_I_vs_U", "compare_subspace"))):
        for n in names:
            data = (d / f"{n}.{fmt}").read_bytes()
            assert data.startswith(magic) and b"panels=" in data and not (d / f"{n}.png").exists()
    rec = json.loads((runs / "FFT/RTE/seed1/.steps/analyse.json").read_text())
    assert f"fig_stats.{fmt}" in rec["outputs"] and "fig_stats.png" not in rec["outputs"]


@pytest.mark.slow
def test_undefined_statistics_read_back_as_nan_in_plot_and_report(tmp_path, capsys):
    from headplast.measure import registry
    from headplast.store import records
    from headplast.store.io import atomic_write_jsonl

    d = make_run(tmp_path, "FFT", 1)
    # every head updated alike: rank correlations with U are undefined (NaN), stored as null
    m = next(m for m in registry.required() if "U" in m.fields)
    rows = [json.loads(line) for line in (d / m.file).read_text().splitlines()]
    atomic_write_jsonl(d / m.file, [{**r, "U": 0.01} for r in rows])
    records.write_record(d, m.name, "synthetic", m.outputs)
    plot = ["plot", "--task", "RTE", "--seed", "1", "--method-label", "FFT", "--output-root", str(tmp_path), *FAST]
    assert main(plot) == 0
    st = json.loads((d / "stats.json").read_text())
    undefined = st["pairs"]["I_pre~U"]
    assert undefined["spearman"] is None and undefined["ci95"] == [None, None] and undefined["top_k"]["overlap"] is None
    defined = {k for k in st["pairs"]["I_pre~I_post"] if not k.startswith(("disattenuated", "example_interval"))
               and not k.endswith("_examples")}
    assert defined <= undefined.keys()  # every statistic a defined pair has, as NaN
    within = {k for k in st["pairs"]["I_pre~I_post"]["within_layer"] if not k.endswith("_examples")}
    assert within <= undefined["within_layer"].keys()
    assert st["run"]["r"] is None  # a null that is not a number stays None
    capsys.readouterr()
    assert main(plot) == 0  # skipped: its summary line is read back from stats.json
    assert "ρ(I_pre, U) = nan, 95% CI [nan, nan] (layer-aware) (constant or too few values)" in capsys.readouterr().out
    assert main(["report", "--output-root", str(tmp_path)]) == 0
    assert "ρ(I_pre, U) = nan, 95% CI [nan, nan] (layer-aware) (constant or too few values)" in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_compare_and_report_say_undefined_where_a_run_has_constant_updates(tmp_path):
    """One run's U is the same for every head: its correlations with U are undefined. compare
    (figures, summary, findings, headline) and report show them as undefined instead of failing
    on the statistics such a pair lacked or on nulls read back from compare_metrics.json."""
    from headplast.measure import registry
    from headplast.store import records
    from headplast.store.io import atomic_write_jsonl

    make_run(tmp_path, "FFT", 1)
    d = make_run(tmp_path, "LoRA_r8", 1)
    m = next(m for m in registry.required() if "U" in m.fields)
    rows = [json.loads(line) for line in (d / m.file).read_text().splitlines()]
    atomic_write_jsonl(d / m.file, [{**r, "U": 0.01} for r in rows])
    records.write_record(d, m.name, "synthetic", m.outputs)
    for lab in ("FFT", "LoRA_r8"):
        assert main(["plot", "--task", "RTE", "--seed", "1", "--method-label", lab, "--output-root", str(tmp_path),
                     *FAST]) == 0
    assert main(["compare", "--output-root", str(tmp_path), *FAST]) == 0
    cmp = tmp_path / "COMPARE/RTE/seed1"
    summary = (cmp / "compare_summary.txt").read_text()
    assert "FFT vs LoRA_r8: the two cannot be compared (ρ(I_pre, U) is undefined for a run)" in summary
    # the comparison table: a constant score has no top 20
    assert re.search(r"top20_overlap\(I_pre,U\) +0\.850 +undefined +undefined +undefined +undefined for a run", summary)
    assert "(undefined for a run)" in summary and "(no detectable difference (exploratory, Holm p = " in summary
    # no head is more static than another: counter-examples are undefined, not an arbitrary subset
    assert re.search(r"n_important_but_static +1 +undefined +undefined +undefined +undefined for a run", summary)
    assert "Counter-examples in total: FFT 3, LoRA_r8 undefined." in summary
    cases = json.loads((d / "cases.json").read_text())["important_but_static"]
    assert cases["count"] is None and cases["heads"] == []
    from headplast.steps.runs import read_compare

    assert math.isnan(read_compare(cmp / "compare_metrics.json")["cases"]["LoRA_r8"]["important_but_static"]["count"])
    raw = json.loads((cmp / "compare_metrics.json").read_text())
    assert raw["key_statistics"]["rho(I_pre,U)"]["LoRA_r8"] is None
    assert main(["report", "--output-root", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "the two cannot be compared" in html and "LoRA_r8: across heads, undefined (too few heads or constant values)" in html


@pytest.mark.slow
def test_report_shows_an_aggregate_over_one_seed_without_a_ci(tmp_path):
    """A method left with one seed (the other collapsed) has no CI: NaN in the aggregate, written
    as null; the report reads it back as NaN and says so instead of failing to format it."""
    for label, seed, collapsed in (("FFT", 1, False), ("FFT", 2, False), ("LoRA_r8", 1, False), ("LoRA_r8", 2, True)):
        make_run(tmp_path, label, seed, collapsed=collapsed)
        assert main(["plot", "--task", "RTE", "--seed", str(seed), "--method-label", label,
                     "--output-root", str(tmp_path), *FAST]) == 0
    assert main(["aggregate", "--methods", "FFT", "LoRA_r8", "--seeds", "1", "2", "--output-root", str(tmp_path),
                 *FAST]) == 0
    m = json.loads((tmp_path / "MULTI_SEED" / "aggregate_metrics.json").read_text())
    one = m["per_method"]["LoRA_r8"]["rho(I_pre,U)"]
    assert one["n"] == 1 and one["ci95"] == [None, None]
    assert main(["report", "--output-root", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert f"{one['mean']:+.3f} (no CI) (n=1)" in html
    two = m["per_method"]["FFT"]["rho(I_pre,U)"]
    assert f"{two['mean']:+.3f} [{two['ci95'][0]:+.3f}, {two['ci95'][1]:+.3f}] (n=2)" in html
