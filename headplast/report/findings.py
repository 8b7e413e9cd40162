"""The main findings of a comparison, written from the numbers: differences inside their
bootstrap CI are called noise, and collapsed runs and unreliable importance are flagged."""

from __future__ import annotations

import math

import numpy as np


def difference_verdict(d: dict, beyond: str, within: str) -> str:
    """A key statistic's verdict: `beyond` or `within` its bootstrap noise, or undefined when a
    run's value is (a correlation with a constant score)."""
    if not np.isfinite(d["difference"]):
        return "undefined for a run"
    return beyond if d["exceeds_uncertainty"] else within


def count_text(x: float, sign: bool = False) -> str:
    """A counter-example count: whole as an integer, split ties to two decimals, NaN as undefined."""
    if not np.isfinite(x):
        return "undefined"
    plus = "+" if sign else ""
    return f"{round(x):{plus}d}" if abs(x - round(x)) < 1e-9 else f"{x:{plus}.2f}"


def stat_text(name: str, x: float, sign: bool = False, digits: int = 3) -> str:
    """A key statistic's value: counts (n_*) by count_text, the others to `digits` decimals."""
    plus = "+" if sign else ""
    return count_text(x, sign) if name.startswith("n_") else f"{x:{plus}.{digits}f}"


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
        verdict = difference_verdict(d, "a difference beyond bootstrap uncertainty", "within noise")
        lo, hi = d["ci95"]
        lines.append(f"{name}: {la} {stat_text(name, d[la])} vs {lb} {stat_text(name, d[lb])}; difference "
                     f"({lb} − {la}) {stat_text(name, d['difference'], True)}, 95% CI [{lo:+.3f}, {hi:+.3f}]: "
                     f"{verdict}.")
    r = keys["rho(I_pre,U)"]
    if not np.isfinite(r["difference"]):
        lines.append("How well importance predicts the update cannot be compared: ρ(I_pre, U) is undefined for "
                     "a run (constant scores or too few heads).")
    elif r["exceeds_uncertainty"]:
        weaker = lb if abs(r[lb]) < abs(r[la]) else la
        lines.append(f"Importance predicts the update less under {weaker}: stronger support for "
                     f"'importance ≠ plasticity' there.")
    else:
        lines.append("The two methods do not differ detectably in how well importance predicts the update.")
    na = keys["n_important_but_static"][la] + keys["n_plastic_but_unimportant"][la]
    nb = keys["n_important_but_static"][lb] + keys["n_plastic_but_unimportant"][lb]
    lines.append(f"Counter-examples in total: {la} {count_text(na)}, {lb} {count_text(nb)}.")
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
