"""Every verdict sentence of the answer, the findings, the summaries and the report: one function
(`verdict`) decides from one inference what may be said, and `sentence` writes it with its numbers.

An inference is a dict: 'estimate', 'ci95' (the interval that decides), optionally 'ci90' and
'margin' (an equivalence test, TOST: 'no relation' only when the 90% interval lies inside
(-margin, margin), Lakens 2017), and for a secondary test 'p_holm' (its Holm-adjusted p-value:
it is labelled exploratory and claimed only when that is below alpha). Without a claim the words
are "no detectable ...": an interval that covers 0 is not evidence of no relation.
"""

from __future__ import annotations

import math

ALPHA = 0.05


def _finite(*v) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in v)


def _ci_ok(ci) -> bool:
    return ci is not None and len(ci) == 2 and _finite(*ci)


def verdict(inf: dict) -> str:
    """'positive', 'negative', 'equivalent', 'none' (no detectable effect) or 'undefined'."""
    est, ci = inf.get("estimate"), inf.get("ci95")
    if not _finite(est) or not _ci_ok(ci):
        return "undefined"
    secondary = "p_holm" in inf
    if secondary and not _finite(inf["p_holm"]):
        return "undefined"
    beyond = ci[0] > 0 or ci[1] < 0
    if beyond and (not secondary or inf["p_holm"] < inf.get("alpha", ALPHA)):
        return "positive" if ci[0] > 0 else "negative"
    margin, ci90 = inf.get("margin"), inf.get("ci90")
    if _finite(margin) and _ci_ok(ci90) and -margin < ci90[0] and ci90[1] < margin:
        return "equivalent"
    return "none"


def interval_text(ci) -> str:
    return f"95% CI {ci[0]:+.2f} to {ci[1]:+.2f}" if _ci_ok(ci) else "95% CI undefined"


def sentence(inf: dict, name: str, positive: str, negative: str, none: str = "no detectable relation",
             equivalent: str = "no relation", undefined: str = "undefined (too few heads or constant values)",
             digits: int = 2) -> str:
    """'<words> (<name> = <estimate>, 95% CI <lo> to <hi>[; equivalence][; exploratory, Holm p])'."""
    v = verdict(inf)
    if v == "undefined":
        return undefined
    words = {"positive": positive, "negative": negative, "equivalent": equivalent, "none": none}[v]
    ci = inf["ci95"]
    extra = ""
    if v == "equivalent":
        lo, hi = inf["ci90"]
        extra += f"; |ρ| < {inf['margin']:.2f} by an equivalence test, TOST (90% CI {lo:+.2f} to {hi:+.2f})"
    if "p_holm" in inf:
        extra += f"; exploratory, Holm-adjusted p = {inf['p_holm']:.2g}"
    return (f"{words} ({name} = {inf['estimate']:+.{digits}f}, 95% CI {ci[0]:+.{digits}f} to {ci[1]:+.{digits}f}"
            f"{extra})")


def short(inf: dict, positive: str, negative: str, none: str = "no detectable difference") -> str:
    """The verdict as a table cell: words, and the Holm-adjusted p of a secondary test."""
    v = verdict(inf)
    if v == "undefined":
        return "undefined for a run"
    words = {"positive": positive, "negative": negative, "equivalent": "no difference", "none": none}[v]
    return words + (f" (exploratory, Holm p = {inf['p_holm']:.2g})" if "p_holm" in inf else "")
