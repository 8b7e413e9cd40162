"""FFT vs LoRA on the same task and seed: every statistic of each, their differences, and
whether each difference exceeds its paired bootstrap uncertainty: resampling heads, and for
the correlations also resampling eval examples (both runs measured the same examples); a
difference is called real only when it exceeds the wider of the two."""

from __future__ import annotations

import numpy as np

from headplast.analysis.cases import counter_examples
from headplast.analysis.stats import (bootstrap_indices, bootstrap_spearman, example_bootstrap_spearman,
                                      example_weights, percentile_ci, spearman, top_k_overlap)

RHO_KEYS = (("I_pre", "U"), ("I_pre", "Urel"), ("I_post", "U"), ("I_post", "Urel"), ("I_pre", "I_post"),
            ("I_pre", "effect_fwd"), ("U", "effect_fwd"), ("I_post", "effect_rev"), ("U", "effect_rev"))


def _boot_topk(a, b, idx, k):
    return np.array([top_k_overlap(a[i], b[i], k)["overlap"] for i in idx])


def _boot_cases(df, idx, top_q, bottom_q, which):
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        c = counter_examples(df.iloc[i].reset_index(drop=True)[["layer", "head", "I_pre", "U"]], "I_pre", "U",
                             top_q, bottom_q)
        out[j] = c[which]["count"]
    return out


def union_ci(a: list, b: list | None) -> list:
    """The wider interval: the union of the two (b may be absent)."""
    if b is None or not np.isfinite(b).all():
        return a
    return [min(a[0], b[0]), max(a[1], b[1])]


def key_statistics(dfs: dict, k: int, top_q: float, bottom_q: float, n_boot: int, seed: int,
                   n_boot_cases: int = 500, per_example: dict | None = None, n_boot_examples: int = 1000) -> dict:
    """{statistic: {label: value, 'difference', 'ci95', 'exceeds_uncertainty'}} for two runs.

    Both runs have the same heads, so resampling heads with the same indices gives a paired
    bootstrap distribution of the difference (second label minus first): 'ci95_heads'. With
    per-example values of both runs (per_example: label -> {column: [N, 1 + heads]}, on the same
    eval examples), the correlations are also recomputed on the same resamples of examples:
    'ci95_examples'. 'ci95' is the union of the two; the verdict uses it.
    """
    (la, da), (lb, db) = dfs.items()
    n = len(da)
    idx = bootstrap_indices(n, n_boot, seed)
    pe = per_example or {}
    counts = None
    if pe.get(la) and pe.get(lb):
        counts = example_weights(len(next(iter(pe[la].values()))), n_boot_examples, seed)
    out = {}

    def add(name, va, vb, boot_diff, ex_diff=None):
        ci_heads = percentile_ci(boot_diff)
        ci_ex = None if ex_diff is None else percentile_ci(ex_diff)
        ci = union_ci(ci_heads, ci_ex)
        exceeds = bool(np.isfinite(ci).all() and (ci[0] > 0 or ci[1] < 0))
        out[name] = {la: va, lb: vb, "difference": vb - va, "ci95": ci, "ci95_heads": ci_heads,
                     "ci95_examples": ci_ex, "exceeds_uncertainty": exceeds}

    for x, y in RHO_KEYS:
        ba = bootstrap_spearman(da[x].to_numpy(float), da[y].to_numpy(float), idx)
        bb = bootstrap_spearman(db[x].to_numpy(float), db[y].to_numpy(float), idx)
        ex = None
        if counts is not None:
            ea = example_bootstrap_spearman(da, pe[la], x, y, counts)
            eb = example_bootstrap_spearman(db, pe[lb], x, y, counts)
            ex = None if ea is None or eb is None else eb - ea
        add(f"rho({x},{y})", spearman(da[x], da[y]), spearman(db[x], db[y]), bb - ba, ex)
    for y in ("U", "Urel"):
        a_i, a_u = da["I_pre"].to_numpy(float), da[y].to_numpy(float)
        b_i, b_u = db["I_pre"].to_numpy(float), db[y].to_numpy(float)
        add(f"top{k}_overlap(I_pre,{y})", top_k_overlap(a_i, a_u, k)["overlap"],
            top_k_overlap(b_i, b_u, k)["overlap"],
            _boot_topk(b_i, b_u, idx, k) - _boot_topk(a_i, a_u, idx, k))
    small = idx[:n_boot_cases]  # counting cases per resample is slower; 500 resamples suffice
    for which in ("important_but_static", "plastic_but_unimportant"):
        ca = counter_examples(da, "I_pre", "U", top_q, bottom_q)[which]["count"]
        cb = counter_examples(db, "I_pre", "U", top_q, bottom_q)[which]["count"]
        add(f"n_{which}", ca, cb, _boot_cases(db, small, top_q, bottom_q, which)
            - _boot_cases(da, small, top_q, bottom_q, which))
    return out
