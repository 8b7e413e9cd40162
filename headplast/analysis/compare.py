"""FFT vs LoRA on the same task and seed: every statistic of each, their differences, and
whether each difference exceeds its paired bootstrap uncertainty (resampling heads)."""

from __future__ import annotations

import math

import numpy as np

from headplast.analysis.cases import counter_examples
from headplast.analysis.stats import bootstrap_indices, bootstrap_spearman, percentile_ci, top_k_overlap

RHO_KEYS = (("I_pre", "U"), ("I_pre", "Urel"), ("I_post", "U"), ("I_post", "Urel"), ("I_pre", "I_post"))


def _boot_topk(a, b, idx, k):
    return np.array([top_k_overlap(a[i], b[i], k)["overlap"] for i in idx])


def _boot_cases(df, idx, top_q, bottom_q, which):
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        c = counter_examples(df.iloc[i].reset_index(drop=True)[["layer", "head", "I_pre", "U"]], "I_pre", "U",
                             top_q, bottom_q)
        out[j] = c[which]["count"]
    return out


def key_statistics(dfs: dict, k: int, top_q: float, bottom_q: float, n_boot: int, seed: int,
                   n_boot_cases: int = 500) -> dict:
    """{statistic: {label: value, 'difference', 'ci95', 'exceeds_uncertainty'}} for two runs.

    Both runs have the same heads, so resampling heads with the same indices gives a paired
    bootstrap distribution of the difference (second label minus first).
    """
    (la, da), (lb, db) = dfs.items()
    n = len(da)
    idx = bootstrap_indices(n, n_boot, seed)
    out = {}

    def add(name, va, vb, boot_diff):
        ci = percentile_ci(boot_diff)
        exceeds = bool(np.isfinite(ci).all() and (ci[0] > 0 or ci[1] < 0))
        out[name] = {la: va, lb: vb, "difference": vb - va, "ci95": ci, "exceeds_uncertainty": exceeds}

    for x, y in RHO_KEYS:
        ba = bootstrap_spearman(da[x].to_numpy(float), da[y].to_numpy(float), idx)
        bb = bootstrap_spearman(db[x].to_numpy(float), db[y].to_numpy(float), idx)
        from headplast.analysis.stats import spearman
        add(f"rho({x},{y})", spearman(da[x], da[y]), spearman(db[x], db[y]), bb - ba)
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


def describe_rho(rho: float, ci) -> str:
    if not np.isfinite(rho):
        return "undefined"
    size = "negligible" if abs(rho) < 0.1 else "weak" if abs(rho) < 0.3 else "moderate" if abs(rho) < 0.5 \
        else "strong"
    sign = "positive" if rho > 0 else "negative"
    zero = ci is not None and np.isfinite(ci).all() and ci[0] <= 0 <= ci[1]
    return f"{size} {sign} (ρ = {rho:.3f}{', CI covers 0' if zero else ''})"


def findings(keys: dict, labels: tuple[str, str], stats: dict, val: dict, k: int) -> list[str]:
    """Main findings written from the numbers; differences inside the bootstrap CI are called noise."""
    la, lb = labels
    lines = []
    for lab in labels:
        p = stats[lab]["pairs"].get("I_pre~U", {})
        rel = stats[lab]["reliability"].get("I_pre", {}).get("reliability", math.nan)
        lines.append(f"{lab}: importance before fine-tuning vs update is {describe_rho(p.get('spearman', math.nan), p.get('ci95'))}"
                     f"; controlled for layer ρ = {p.get('partial_spearman_layer', math.nan):.3f} "
                     f"(within-layer permutation p = {p.get('within_layer_perm_p', math.nan):.3g}); "
                     f"split-half reliability of I_pre = {rel:.2f}.")
    for name, d in keys.items():
        verdict = "a difference beyond bootstrap uncertainty" if d["exceeds_uncertainty"] else "within noise"
        lo, hi = d["ci95"]
        f = "d" if name.startswith("n_") else ".3f"  # counts are integers
        lines.append(f"{name}: {la} {d[la]:{f}} vs {lb} {d[lb]:{f}}; difference ({lb} − {la}) "
                     f"{d['difference']:+{f}}, 95% CI [{lo:+.3f}, {hi:+.3f}]: {verdict}.")
    r = keys["rho(I_pre,U)"]
    if r["exceeds_uncertainty"]:
        weaker = lb if abs(r[lb]) < abs(r[la]) else la
        lines.append(f"Importance predicts the update less under {weaker}: stronger support for "
                     f"'importance ≠ plasticity' there.")
    else:
        lines.append("The two methods do not differ detectably in how well importance predicts the update.")
    na = keys["n_important_but_static"][la] + keys["n_plastic_but_unimportant"][la]
    nb = keys["n_important_but_static"][lb] + keys["n_plastic_but_unimportant"][lb]
    lines.append(f"Counter-examples in total: {la} {na}, {lb} {nb}.")
    lines.append(f"Validation {val['metric_name']}: {la} {val[la]:.4f}, {lb} {val[lb]:.4f} "
                 f"(theta0 {val['theta0']:.4f}, majority baseline {val['majority']:.4f}).")
    for lab in labels:
        if val[lab] <= val["majority"] + 1e-9:
            lines.append(f"Caution: {lab} is collapsed (no better than the majority class); its update and "
                         f"post-fine-tuning importance do not describe a model that learned the task.")
    rel = min(stats[lab]["reliability"].get("I_pre", {}).get("reliability", math.nan) for lab in labels)
    if np.isfinite(rel) and rel < 0.5:
        lines.append(f"Caution: importance before fine-tuning is unreliable (split-half reliability {rel:.2f}); "
                     f"no correlation with it can exceed about {math.sqrt(max(rel, 0)):.2f}. A larger eval subset "
                     f"or a theta0 that already solves the task makes I_pre more reliable.")
    return lines
