import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from headplast.analysis.across import head_agreement, kendalls_w, mean_ci, paired_tests, summarise
from headplast.analysis.cases import counter_examples
from headplast.analysis.stats import (partial_spearman_layer, run_stats, spearman, split_half_reliability,
                                      top_k_overlap, within_layer_permutation_p)


IU = (("I_pre", "U"),)


def _table(i_pre, u, layers=None, **extra):
    n = len(i_pre)
    layers = np.arange(n) // 4 if layers is None else layers
    return pd.DataFrame({"layer": layers, "head": np.arange(n) % 4, "I_pre": i_pre, "U": u, **extra})


def test_spearman_and_kendall_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=60), rng.normal(size=60)
    b[:5] = b[5]  # ties
    assert spearman(a, b) == pytest.approx(st.spearmanr(a, b)[0], abs=1e-12)
    s = run_stats(_table(a, b), IU, k=10, n_boot=500, n_perm=200)["pairs"]["I_pre~U"]
    assert s["spearman"] == pytest.approx(st.spearmanr(a, b)[0])
    assert s["p_value"] == pytest.approx(st.spearmanr(a, b)[1])
    assert s["kendall_tau"] == pytest.approx(st.kendalltau(a, b)[0])


def test_monotone_function_gives_rho_one_and_full_overlap():
    rng = np.random.default_rng(1)
    i = rng.exponential(size=144)
    s = run_stats(_table(i, np.exp(3 * i) + 1), IU, k=20, n_boot=500, n_perm=100)["pairs"]["I_pre~U"]
    assert s["spearman"] == pytest.approx(1.0)
    assert s["ci95"][0] == pytest.approx(1.0)
    assert s["top_k"]["overlap"] == 1.0 and s["top_k"]["chance"] == pytest.approx(20 / 144)


def test_independent_values_give_ci_covering_zero_in_most_seeds():
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        s = run_stats(_table(rng.normal(size=144), rng.normal(size=144)), IU, n_boot=400, n_perm=50,
                      seed=seed)["pairs"]["I_pre~U"]
        covered += s["ci95"][0] <= 0 <= s["ci95"][1]
    assert covered >= 34  # nominal 95%: 38 of 40 expected


def test_pure_layer_effect_vanishes_under_layer_control():
    rng = np.random.default_rng(2)
    layers = np.repeat(np.arange(12), 12)
    a = layers + 0.01 * rng.normal(size=144)  # both depend on the layer only
    b = -0.5 * layers + 0.01 * rng.normal(size=144)
    assert spearman(a, b) < -0.95
    assert abs(partial_spearman_layer(a, b, layers)) < 0.25
    assert within_layer_permutation_p(a, b, layers, 500, 0) > 0.05


def test_top_k_overlap_by_hand():
    a = np.array([5, 4, 3, 2, 1, 0.0])
    b = np.array([0, 4, 3, 5, 1, 2.0])
    r = top_k_overlap(a, b, 3)  # top3(a) = {0,1,2}; top3(b) = {3,1,2}
    assert r["count"] == 2 and r["overlap"] == pytest.approx(2 / 3) and r["chance"] == 0.5
    assert r["p_value"] == pytest.approx(st.hypergeom.sf(1, 6, 3, 3))


def test_split_half_reliability_high_for_signal_low_for_noise():
    rng = np.random.default_rng(3)
    signal = rng.normal(size=40)
    base = rng.normal(size=(200, 1))
    good = np.hstack([base, base + signal + 0.1 * rng.normal(size=(200, 40))])
    noise = np.hstack([base, base + rng.normal(size=(200, 40))])
    assert split_half_reliability(good)["reliability"] > 0.95
    assert abs(split_half_reliability(noise)["reliability"]) < 0.5


def test_disattenuation_divides_by_sqrt_reliability():
    rng = np.random.default_rng(4)
    n = 16
    per_ex = rng.normal(size=(50, n)) + rng.normal(size=n)
    losses = np.hstack([np.zeros((50, 1)), per_ex])
    t = _table(per_ex.mean(0), rng.normal(size=n))
    s = run_stats(t, IU, {"I_pre": losses}, n_boot=200, n_perm=50)
    rel = s["reliability"]["I_pre"]["reliability"]
    p = s["pairs"]["I_pre~U"]
    assert p["disattenuated"] == pytest.approx(p["spearman"] / np.sqrt(rel))


def test_counter_examples_by_hand():
    # 10 heads; top 20% = 2 heads, bottom 50% = 5 heads
    i = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0.0])
    u = np.array([0, 9, 1, 2, 3, 4, 5, 6, 8, 7.0])
    t = _table(i, u, layers=np.zeros(10, int))
    t["head"] = np.arange(10)
    c = counter_examples(t, top_q=0.2, bottom_q=0.5)
    # important = {0, 1}; static (U bottom 5) = {0, 2, 3, 4, 5} -> {0}
    assert [h["head"] for h in c["important_but_static"]["heads"]] == [0]
    # plastic = {1, 8}; unimportant (I bottom 5) = {5..9} -> {8}
    assert [h["head"] for h in c["plastic_but_unimportant"]["heads"]] == [8]
    assert c["important_but_static"]["expected_if_independent"] == pytest.approx(2 * 5 / 10)
    assert c["plastic_but_unimportant"]["heads"][0]["U"] == 8.0


def test_aggregation_means_cis_and_paired_tests_by_hand():
    fft = [0.30, 0.20, 0.25, 0.35, 0.10]
    lora = [0.10, 0.15, 0.05, 0.20, 0.00]
    rows = [{"method": m, "seed": s + 1, "statistic": "val_metric", "value": v, "collapsed": False,
             "included": True} for m, vals in (("FFT", fft), ("LoRA_r8", lora)) for s, v in enumerate(vals)]
    rows.append({"method": "LoRA_r8", "seed": 6, "statistic": "val_metric", "value": 9.0, "collapsed": True,
                 "included": False})
    out = summarise(pd.DataFrame(rows), ["FFT", "LoRA_r8"])  # not a correlation: raw scale
    d = out["per_method"]["FFT"]["val_metric"]
    m, sd = np.mean(fft), np.std(fft, ddof=1)
    h = st.t.ppf(0.975, 4) * sd / np.sqrt(5)
    assert d["mean"] == pytest.approx(m) and d["std"] == pytest.approx(sd)
    assert d["ci95"] == pytest.approx([m - h, m + h])
    assert out["per_method"]["LoRA_r8"]["val_metric"]["n"] == 5  # collapsed run excluded
    t = out["paired_tests"]["LoRA_r8 - FFT"]["val_metric"]
    assert t["t_p"] == pytest.approx(st.ttest_rel(lora, fft).pvalue)
    assert t["wilcoxon_p"] == pytest.approx(st.wilcoxon(lora, fft).pvalue)
    assert t["mean_difference"] == pytest.approx(np.mean(lora) - np.mean(fft))
    assert mean_ci([1.0])["n"] == 1 and paired_tests([1.0], [2.0])["n_pairs"] == 1


def test_kendalls_w_and_head_agreement():
    perfect = np.tile(np.arange(10.0), (4, 1))
    assert kendalls_w(perfect) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    assert kendalls_w(rng.normal(size=(30, 10))) < 0.15
    dfs = {s: pd.DataFrame({"U": np.arange(8.0) * (s + 1), "I_pre": np.arange(8.0), "I_post": -np.arange(8.0)})
           for s in range(3)}
    ag = head_agreement(dfs)
    assert ag["U"]["mean_pairwise_spearman"] == pytest.approx(1.0) and ag["U"]["kendalls_w"] == pytest.approx(1.0)


def test_reliability_stays_in_bounds_for_anticorrelated_halves():
    """Averaging Spearman-Brown per split explodes near r = -1 (reported -4.03, -5.49 before)."""
    from headplast.analysis.stats import fisher_z_mean, spearman_brown

    rng = np.random.default_rng(7)
    # two clusters of examples with opposite importance rankings: random halves disagree
    sig = rng.normal(size=30)
    per_ex = np.vstack([sig + 0.01 * rng.normal(size=(20, 30)), -sig + 0.01 * rng.normal(size=(20, 30))])
    losses = np.hstack([np.zeros((40, 1)), per_ex])
    r = split_half_reliability(losses)
    assert -1 <= r["reliability"] <= 1 and all(-1 <= v <= 1 for v in r["range95"])
    assert spearman_brown(0.5) == pytest.approx(2 / 3) and spearman_brown(-0.9) == -0.9
    assert fisher_z_mean([0.9, 0.9]) == pytest.approx(0.9)
    assert fisher_z_mean([0.99, 0.0]) == pytest.approx(np.tanh(np.arctanh(0.99) / 2))


def test_disattenuation_only_where_defined():
    from headplast.analysis.stats import disattenuated

    assert disattenuated(0.3, {"I_pre": 0.64})["disattenuated"] == pytest.approx(0.3 / 0.8)
    neg = disattenuated(0.09, {"I_pre": -0.3, "I_post": -0.5})  # gave 0.18 from two negatives before
    assert np.isnan(neg["disattenuated"]) and "I_pre" in neg["disattenuated_note"]
    big = disattenuated(0.9, {"I_pre": 0.5, "I_post": 0.4})  # gave 2.24 for I_pre~I_post before
    assert np.isnan(big["disattenuated"]) and big["disattenuated_raw"] > 1 and "exceeds 1" in big["disattenuated_note"]
    assert disattenuated(0.5, {}) == {}


def test_example_bootstrap_equals_explicit_resampling():
    from headplast.analysis.stats import example_bootstrap_spearman, example_weights

    rng = np.random.default_rng(8)
    N, n = 30, 12
    losses = np.hstack([rng.normal(size=(N, 1)), rng.normal(size=(N, n)) + rng.normal(size=n)])
    u = rng.normal(size=n)
    t = _table(losses[:, 1:].mean(0) - losses[:, 0].mean(), u)
    counts = example_weights(N, 50, 0)
    got = example_bootstrap_spearman(t, {"I_pre": losses}, "I_pre", "U", counts)
    for b in range(50):
        idx = np.repeat(np.arange(N), np.rint(counts[b] * N).astype(int))  # the resampled examples
        imp = (losses[idx, 1:] - losses[idx, :1]).mean(0)
        assert got[b] == pytest.approx(st.spearmanr(imp, u)[0], abs=1e-9)
    assert example_bootstrap_spearman(t, {}, "I_pre", "U", counts) is None


def test_seed_aggregate_of_correlations_stays_in_bounds():
    """A t-interval on the raw scale gave [-0.85, +1.34] for three seeds of rho."""
    d = mean_ci([0.95, 0.2, 0.9], correlation=True)
    assert -1 <= d["ci95"][0] <= d["mean"] <= d["ci95"][1] <= 1 and d["scale"] == "Fisher z"
    z = np.arctanh([0.95, 0.2, 0.9])
    assert d["mean"] == pytest.approx(np.tanh(z.mean()))
    h = st.t.ppf(0.975, 2) * z.std(ddof=1) / np.sqrt(3)
    assert d["ci95"] == pytest.approx([np.tanh(z.mean() - h), np.tanh(z.mean() + h)])
    raw = mean_ci([0.95, 0.2, 0.9])
    assert raw["ci95"][1] > 1  # what the raw scale does
