"""The answer to the question in three lines, from a comparison's numbers (compare_metrics.json).

    FFT: important heads change more than the others (ρ(I_pre, U) = +0.31, 95% CI [+0.08, +0.52])
    LoRA_r8: important heads change no differently from the others (ρ = +0.05, 95% CI [-0.20, +0.29])
    FFT vs LoRA_r8: ρ(I_pre, U) is lower under LoRA_r8 than under FFT (difference -0.26, 95% CI [-0.49, -0.03])

An interval is the wider of the bootstrap over heads and over eval examples; a claim is made
only when it excludes 0. Collapsed runs and unreliable importance are said on the line.
"""

from __future__ import annotations

import math

import numpy as np

from headplast.analysis.compare import union_ci


def _ci(p: dict) -> list:
    """The union of the head and the example bootstrap intervals of one correlation."""
    return union_ci(p.get("ci95") or [math.nan, math.nan], p.get("ci95_examples"))


def _fmt(ci) -> str:
    return f"95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def method_line(label: str, stats: dict, info: dict) -> str:
    p = stats["pairs"].get("I_pre~U", {})
    rho, ci = p.get("spearman", math.nan), _ci(p)
    noise = ""
    if not np.isfinite(rho) or not np.isfinite(ci).all():
        verdict = "undefined (too few heads or constant values)"
    elif ci[0] > 0:
        verdict = "important heads change more than the others"
    elif ci[1] < 0:
        verdict = "important heads change less than the others"
    else:
        verdict, noise = "important heads change no differently from the others", "; within noise"
    line = f"{label}: {verdict} (ρ(I_pre, U) = {rho:+.2f}, {_fmt(ci)}{noise})"
    cautions = []
    if info.get("collapsed"):
        cautions.append("collapsed: no better than the majority class")
    rel = stats.get("reliability", {}).get("I_pre", {}).get("reliability", math.nan)
    if np.isfinite(rel) and rel < 0.8:
        cautions.append(f"I_pre reliability only {rel:.2f}")
    return line + (f"; caution: {', '.join(cautions)}" if cautions else "")


def difference_line(labels: tuple[str, str], keys: dict) -> str:
    la, lb = labels
    d = keys["rho(I_pre,U)"]
    diff, ci = d["difference"], d["ci95"]
    if not np.isfinite(diff):
        verdict = "the two cannot be compared (ρ(I_pre, U) is undefined for a run)"
    elif not d["exceeds_uncertainty"]:
        verdict = "importance predicts the update no differently under the two (within noise)"
    else:
        verdict = f"ρ(I_pre, U) is {'higher' if diff > 0 else 'lower'} under {lb} than under {la}"
    return f"{la} vs {lb}: {verdict} (difference {lb} − {la} {diff:+.2f}, {_fmt(ci)})"


def headline(m: dict) -> list[str]:
    """Three lines: each method's answer, then the difference between them."""
    labels = tuple(m["labels"])
    lines = [method_line(lab, m["stats"][lab], m["runs"][lab]) for lab in labels]
    return lines + [difference_line(labels, m["key_statistics"])]


def _rho_text(stats: dict, x: str, y: str, name: str) -> str:
    p = stats["pairs"].get(f"{x}~{y}", {})
    rho, ci = p.get("spearman", math.nan), _ci(p)
    if not np.isfinite(rho) or not np.isfinite(ci).all():
        return f"{name} undefined"
    sure = "" if ci[0] > 0 or ci[1] < 0 else ", within noise"
    return f"{name} = {rho:+.2f} ({_fmt(ci)}{sure})"


def effect_lines(m: dict) -> list[str]:
    """Per method: does the size of a head's update, and its importance before, predict how much of
    fine-tuning's gain the head's own update carries (effect_fwd)?"""
    out = []
    for lab in m["labels"]:
        st = m["stats"][lab]
        if "U~effect_fwd" not in st["pairs"]:
            continue
        out.append(f"{lab}: the gain a head's own update carries vs its size: "
                   f"{_rho_text(st, 'U', 'effect_fwd', 'ρ(U, effect_fwd)')}; vs its importance before: "
                   f"{_rho_text(st, 'I_pre', 'effect_fwd', 'ρ(I_pre, effect_fwd)')}")
    return out


def answer_lines(m: dict) -> list[str]:
    """Everything the answer says for one comparison: the headline, the update effect, the subspaces."""
    return m.get("headline", []) + effect_lines(m) + subspace_line(m)


def subspace_line(m: dict) -> list[str]:
    """Do FFT and LoRA move a head in the same directions (more than two seeds of one method do)?"""
    sub = m.get("subspace")
    mean = sub["phi"].get("mean") if sub else None
    if mean is None or not np.isfinite(mean):  # null as written, NaN as read back (steps.runs.read_compare)
        return []
    floors = "; ".join(f"{lab} seed vs seed {f['mean']:.2f}" for lab, f in sub["noise_floor"].items())
    return [f"{' and '.join(m['labels'])} share φ = {mean:.2f} of a head's top-{sub['k']} update "
            f"directions on average (random subspaces {sub['random_subspaces']:.2f}; "
            + (floors or "no second seed for a noise floor") + ")"]
