"""Across runs: flat per-run statistics, summaries over seeds, paired tests, head agreement."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as st

from headplast.analysis.names import PRIMARY, pair_name, split_name
from headplast.analysis.stats import combined, fisher_z_mean, holm, spearman

HEADLINE = (PRIMARY, pair_name("I_pre", "Urel", "rho"), pair_name("I_pre", "U", "partial_rho"),
            pair_name("I_pre", "U", "top_k"), "n_important_but_static", "n_plastic_but_unimportant",
            pair_name("I_post", "U", "rho"), pair_name("I_pre", "I_post", "rho"), "val_metric")


def flat_stats(stats: dict, cases: dict, info: dict) -> dict:
    """One number per statistic for a run (the unit that is aggregated over seeds)."""
    out = {}
    for name, p in stats["pairs"].items():
        _, x, y = split_name(name)
        out[pair_name(x, y, "rho")] = p.get("spearman", math.nan)
        out[pair_name(x, y, "partial_rho")] = p.get("partial_spearman_layer", math.nan)
        out[pair_name(x, y, "kendall_tau")] = p.get("kendall_tau", math.nan)
        out[pair_name(x, y, "top_k")] = p.get("top_k", {}).get("overlap", math.nan)
        d = p.get("disattenuated", math.nan)  # beyond [-1, 1] it is kept as 'disattenuated_raw' only:
        if not (d is not None and np.isfinite(d)):  # aggregate the raw value (dropping it biases the mean to 0)
            d = p.get("disattenuated_raw", d)
        out[pair_name(x, y, "disattenuated_rho")] = d
        if "beyond" in p:
            out[pair_name(x, y, "rho_beyond")] = p["beyond"].get("spearman", math.nan)
    for v, r in stats["reliability"].items():
        out[f"reliability({v})"] = r["reliability"]
    out["n_important_but_static"] = cases["important_but_static"]["count"]
    out["n_plastic_but_unimportant"] = cases["plastic_but_unimportant"]["count"]
    out["val_metric"] = info["val_metric"]
    out["val_metric_theta0"] = info["val_metric_theta0"]
    return out


def seed_intervals(stats_list: list[dict]) -> dict:
    """{statistic: {'ci95', 'ci90'}} of the primary endpoint (across heads, within layers): each
    seed's own interval (the answer's: layer blocks ∪ eval examples), its bounds averaged over
    seeds on Fisher's z. Seeds share the heads and the eval examples, so the t-interval over seeds
    shows training randomness only; the measurement uncertainty each seed carries does not shrink
    with more seeds, and the aggregate's verdict uses the wider of the two."""
    out = {}
    for name, within in ((PRIMARY, False), (pair_name("I_pre", "U", "partial_rho"), True)):
        infs = [combined(st["pairs"][pair_name("I_pre", "U")], within) for st in stats_list
                if pair_name("I_pre", "U") in st.get("pairs", {})]
        bound = lambda lev, i: [inf[lev][i] for inf in infs]  # noqa: E731  one bound of every seed
        out[name] = {lev: [fisher_z_mean(bound(lev, i)) if infs and np.isfinite(bound(lev, i)).all() else math.nan
                           for i in (0, 1)] for lev in ("ci95", "ci90")}
    return out


CORRELATIONS = ("rho(", "partial_rho(", "rho_beyond(", "kendall_tau(", "reliability(")


def is_correlation(statistic: str) -> bool:
    """Statistics bounded by [-1, 1], averaged and tested across seeds on Fisher's z scale. The
    disattenuated rho is not among them: it exceeds 1 where measurement errors correlate, and is
    averaged raw (clipping it to +-1 for Fisher's z, or dropping it, would bias the mean)."""
    return statistic.startswith(CORRELATIONS)


def mean_ci(values, correlation: bool = False) -> dict:
    """Mean, standard deviation and 95% t-interval over seeds. For a correlation the mean and the
    interval are computed on Fisher's z scale (atanh) and transformed back, so both stay in
    [-1, 1]; 'std' is then the spread of the raw values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": [math.nan, math.nan]}
    z = np.arctanh(np.clip(v, -0.999999, 0.999999)) if correlation else v
    back = np.tanh if correlation else (lambda x: x)
    m = float(fisher_z_mean(v)) if correlation else float(v.mean())
    if n == 1:
        return {"n": 1, "mean": m, "std": math.nan, "ci95": [math.nan, math.nan], "ci90": [math.nan, math.nan]}
    se = z.std(ddof=1) / math.sqrt(n)

    def ci(level):
        h = float(st.t.ppf(0.5 + level / 2, n - 1) * se)
        return [float(back(z.mean() - h)), float(back(z.mean() + h))]
    out = {"n": n, "mean": m, "std": float(v.std(ddof=1)), "ci95": ci(0.95), "ci90": ci(0.90)}
    if correlation:
        out["scale"] = "Fisher z"
    return out


def wilcoxon_min_p(n: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give with n pairs: 2 / 2^n
    (every difference of one sign). With 3 seeds it is 0.25: the test cannot reject at any usual level."""
    return min(1.0, 2.0 / 2 ** n) if n else math.nan


def paired_tests(a, b, correlation: bool = False) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of b - a over seeds present in both. For a
    correlation both tests are of the Fisher z values (the scale its mean and interval are on,
    'scale'); mean_difference and ci95 stay on the raw scale. 'wilcoxon_min_p' is the smallest p
    the Wilcoxon test can give with these pairs (0.25 for 3 seeds, 0.125 for 4): below ~6 pairs it
    cannot reach 0.05, whatever the data."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out = {"n_pairs": int(len(a)), "mean_difference": float((b - a).mean()) if len(a) else math.nan,
           "t": math.nan, "t_p": math.nan, "wilcoxon_stat": math.nan, "wilcoxon_p": math.nan,
           "wilcoxon_min_p": wilcoxon_min_p(len(a)), "ci95": [math.nan, math.nan]}
    if len(a) >= 2:
        h = float(st.t.ppf(0.975, len(a) - 1) * (b - a).std(ddof=1) / math.sqrt(len(a)))
        out["ci95"] = [out["mean_difference"] - h, out["mean_difference"] + h]
    if correlation:
        out["scale"] = "Fisher z"
        a, b = np.arctanh(np.clip(a, -0.999999, 0.999999)), np.arctanh(np.clip(b, -0.999999, 0.999999))
    if len(a) >= 2 and np.any(b - a != 0):
        with warnings.catch_warnings():  # scipy's "precision loss" on nearly identical pairs: numeric only
            warnings.simplefilter("ignore", RuntimeWarning)
            t = st.ttest_rel(b, a)
            out.update(t=float(t.statistic), t_p=float(t.pvalue))
            w = st.wilcoxon(b, a)
            out.update(wilcoxon_stat=float(w.statistic), wilcoxon_p=float(w.pvalue))
    return out


def kendalls_w(matrix: np.ndarray) -> float:
    """Kendall's coefficient of concordance of m raters (rows) ranking n items (columns), corrected
    for ties: W = 12 S / (m^2 (n^3 - n) - m sum_j T_j), T_j = sum over rater j's tie groups of t^3 - t
    (ties get mid-ranks; without the correction W is too small when there are ties)."""
    m, n = matrix.shape
    if m < 2 or n < 2:
        return math.nan
    R = st.rankdata(matrix, axis=1).sum(0)
    S = ((R - R.mean()) ** 2).sum()
    T = sum(float((t ** 3 - t).sum()) for t in (np.unique(row, return_counts=True)[1] for row in matrix))
    den = m ** 2 * (n ** 3 - n) - m * T
    return float(12 * S / den) if den > 0 else math.nan


def head_agreement(per_seed: dict[int, pd.DataFrame], columns=("U", "I_pre", "I_post")) -> dict:
    """How reproducible each head-level measure is across seeds."""
    out = {}
    seeds = sorted(per_seed)
    if not seeds:
        return {col: {"mean_pairwise_spearman": math.nan, "kendalls_w": math.nan, "n_seeds": 0} for col in columns}
    for col in columns:
        mats = np.stack([per_seed[s][col].to_numpy(float) for s in seeds])
        pair_rhos = [spearman(mats[i], mats[j]) for i, j in itertools.combinations(range(len(seeds)), 2)]
        out[col] = {"mean_pairwise_spearman": fisher_z_mean(pair_rhos) if pair_rhos else math.nan,
                    "kendalls_w": kendalls_w(mats), "n_seeds": len(seeds)}
    return out


def summarise(table: pd.DataFrame, methods: list[str]) -> dict:
    """table: tidy rows (method, seed, statistic, value, collapsed, included)."""
    inc = table[table.included]
    per_method = {m: {s: mean_ci(g.value, is_correlation(s)) for s, g in inc[inc.method == m].groupby("statistic")}
                  for m in methods}
    tests = {}
    for ma, mb in itertools.combinations(methods, 2):
        res = {}
        for s in inc.statistic.unique():
            wide = inc[inc.statistic == s].pivot_table(index="seed", columns="method", values="value")
            if ma in wide and mb in wide:
                res[s] = paired_tests(wide[ma].to_numpy(), wide[mb].to_numpy(), is_correlation(s))
        adj = holm({s: res[s]["t_p"] for s in HEADLINE if s in res})
        for s, p in adj.items():
            res[s]["t_p_holm"] = p
        tests[f"{mb} - {ma}"] = res
    return {"per_method": per_method, "paired_tests": tests,
            "secondary": {"method": "Holm", "exploratory": True, "family": [s for s in HEADLINE],
                          "what": "paired t-tests of the statistics in 'family', per method pair"}}
