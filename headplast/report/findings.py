"""The main findings of a comparison, written from the numbers: the comparison table (every
statistic of both runs, their difference, its interval and verdict), and sentences that say what
the answer says in the same words (report.verdict), collapsed runs and unreliable importance."""

from __future__ import annotations

import math

import numpy as np

from headplast.analysis.names import display_name, pair_name
from headplast.analysis.thresholds import collapsed, unreliable
from headplast.report.headline import difference_inference, difference_text
from headplast.report.verdict import short


def difference_verdict(m: dict, name: str) -> str:
    """A key statistic's verdict as a table cell (report.verdict.short, from the same interval
    and Holm-adjusted p as every sentence about it)."""
    la, lb = m["labels"]
    return short(difference_inference(m, name), f"higher under {lb}", f"lower under {lb}")


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


def comparison_table(m: dict) -> dict:
    """{'columns', 'rows'}: per key statistic, both runs' values, the difference, its 95% interval
    and the verdict (exploratory: Holm-adjusted over the comparison's secondary tests)."""
    la, lb = m["labels"]
    rows = []
    for name, d in m["key_statistics"].items():
        lo, hi = d["ci95"]
        def cell(x, sign=False):
            return stat_text(name, x, sign) if np.isfinite(x) else "undefined"
        rows.append([name, cell(d[la]), cell(d[lb]), cell(d["difference"], True),
                     f"{lo:+.3f} to {hi:+.3f}" if np.isfinite([lo, hi]).all() else "undefined",
                     difference_verdict(m, name)])
    return {"columns": ["statistic", la, lb, f"difference ({lb} − {la})", "95% CI", "verdict"], "rows": rows}


def table_text(t: dict) -> list[str]:
    """A table as aligned text lines."""
    cells = [t["columns"]] + t["rows"]
    width = [max(len(str(r[i])) for r in cells) for i in range(len(t["columns"]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, width)).rstrip() for r in cells]


def run_collapsed(m: dict, label: str) -> bool:
    """Whether a compared run collapsed: as its training recorded it (run_config.json, carried in
    the comparison's 'runs'), else from the comparison's validation metrics by the same rule."""
    recorded = m.get("runs", {}).get(label, {}).get("collapsed")
    if recorded is not None:
        return bool(recorded)
    return collapsed(m["validation"][label], m["validation"]["majority"])


def findings(m: dict) -> list[str]:
    """Main findings written from the numbers, in the answer's words."""
    la, lb = m["labels"]
    keys, stats, val = m["key_statistics"], m["stats"], m["validation"]
    lines = []
    primary = pair_name("I_pre", "U", "rho")
    for lab in (la, lb):
        p = stats[lab]["pairs"].get(pair_name("I_pre", "U"), {})
        lines.append(f"{lab}: within-layer permutation test of {display_name(primary)} controlled for layer: "
                     f"p = {p.get('within_layer_perm_p', math.nan):.3g}.")
    lines.append(f"How well importance predicts the update, {la} vs {lb}: {difference_text(m)}.")
    within = pair_name("I_pre", "U", "rho_within_layer")
    lines.append(f"The same within layers: {difference_text(m, within, display_name(within))}."
                 if within in keys else "")
    na = keys["n_important_but_static"][la] + keys["n_plastic_but_unimportant"][la]
    nb = keys["n_important_but_static"][lb] + keys["n_plastic_but_unimportant"][lb]
    lines.append(f"Counter-examples in total: {la} {count_text(na)}, {lb} {count_text(nb)}.")
    lines.append(f"Validation {val['metric_name']}: {la} {val[la]:.4f}, {lb} {val[lb]:.4f} "
                 f"(theta0 {val['theta0']:.4f}, majority baseline {val['majority']:.4f}).")
    for lab in (la, lb):
        if run_collapsed(m, lab):
            lines.append(f"Caution: {lab} is collapsed (no better than the majority class); its update and "
                         f"post-fine-tuning importance do not describe a model that learned the task.")
    rel = min(stats[lab]["reliability"].get("I_pre", {}).get("reliability", math.nan) for lab in (la, lb))
    if unreliable(rel):
        lines.append(f"Caution: importance before fine-tuning is unreliable (split-half reliability {rel:.2f}); "
                     f"no correlation with it can exceed about {math.sqrt(max(rel, 0)):.2f}. A larger eval subset "
                     f"or a theta0 that already solves the task makes I_pre more reliable.")
    return [line for line in lines if line]
