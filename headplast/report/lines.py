"""One-line summaries that steps and commands print."""

from __future__ import annotations

import math

from headplast.analysis.stats import combined
from headplast.analysis.names import PRIMARY_PAIR, display_name


def train_line(rc: dict) -> str:
    """'accuracy 0.4950 -> 0.5490 (majority 0.5270)' from a run's run_config.json."""
    v = rc["validation"]
    return (f"{v['theta1']['metric_name']} {v['theta0']['metric']:.4f} -> {v['theta1']['metric']:.4f} "
            f"(majority {v['majority_baseline']:.4f}{', COLLAPSED' if rc['collapsed'] else ''})")


def rho_line(stats: dict, pair: str = PRIMARY_PAIR) -> str:
    p = stats["pairs"].get(pair, {})
    lo, hi = combined(p)["ci95"] if p else [math.nan, math.nan]  # layer blocks ∪ examples, as the answer
    note = f" ({p['note']})" if p.get("note") else ""
    return (f"{display_name(pair, 'rho')} = {p.get('spearman', math.nan):.3f}, 95% CI [{lo:.3f}, {hi:.3f}] "
            f"(layer-aware){note}")


def report_line(path) -> str:
    """Where the HTML report is, its size, and how to open it."""
    return f"{path} ({path.stat().st_size / 1e6:.1f} MB; open it in a browser: file://{path.resolve()})"


def timings_line(timings: dict) -> str:
    return ", ".join(f"{k} {v}{'s' if isinstance(v, float) else ''}" for k, v in timings.items())
