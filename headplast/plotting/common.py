"""Shared plotting helpers: headless backend, layer colours, annotated scatter, atomic save."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["figure.constrained_layout.use"] = True  # colour bars and labels never overlap
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from headplast.analysis.stats import combined  # noqa: E402
from headplast.store import schema  # noqa: E402
from headplast.store.io import atomic_path  # noqa: E402

LABELS = schema.labels()  # axis label of every heads.csv column that has one (as imported)


def layer_aware_ci(s: dict) -> list[float]:
    """The 95% interval the answer uses for a pairs entry of stats.json (layer-block and example
    bootstraps' union: analysis.stats.combined); heads are not independent, so the figures never
    show the heads-as-independent `ci95`."""
    return combined(s)["ci95"]


def fmt_rho(s: dict | None) -> str:
    if not s or not np.isfinite(s.get("spearman", math.nan)):
        return "ρ = n/a"
    lo, hi = layer_aware_ci(s)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"ρ = {s['spearman']:.2f} [interval n/a]"
    return f"ρ = {s['spearman']:.2f} [{lo:.2f}, {hi:.2f}] (95%, layer-aware)"


def log_axes(ax, x: bool = True, y: bool = True) -> None:
    """Log scale with short tick labels ("0.04"), readable even when the data span less than a decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    short = FuncFormatter(lambda v, _: f"{v:.2g}")
    for on, set_scale, axis in ((x, ax.set_xscale, ax.xaxis), (y, ax.set_yscale, ax.yaxis)):
        if on:
            set_scale("log")
            axis.set_major_formatter(short)
            axis.set_minor_locator(LogLocator(subs=(2, 3, 5)))
            axis.set_minor_formatter(short)


def scatter(ax, df, x: str, y: str, s: dict | None = None, title: str | None = None, cbar=True,
            colour: str = "layer"):
    """Heads as points coloured by layer (or `colour`); log axis for positive magnitudes; rho and CI on the plot."""
    xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
    sc = ax.scatter(xs, ys, c=df[colour], cmap="viridis", s=22, edgecolors="k", linewidths=0.3)
    for axis, name, vals in (("x", x, xs), ("y", y, ys)):
        if name in schema.log_columns() and np.all(vals[np.isfinite(vals)] > 0):
            log_axes(ax, x=axis == "x", y=axis == "y")
    labels = schema.labels()  # read now: a measurement declared after import has its labels too
    ax.set_xlabel(labels.get(x, x), fontsize=8)
    ax.set_ylabel(labels.get(y, y), fontsize=8)
    ax.set_title(title or f"{y} vs {x}", fontsize=9)
    ax.text(0.02, 0.97, fmt_rho(s), transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(boxstyle="round", fc="white", alpha=0.8))
    if cbar:
        ax.figure.colorbar(sc, ax=ax, label=colour, pad=0.01)
    return sc


def save(fig, path: str | Path) -> None:
    """Write the figure atomically; the number of panels (colour bars excluded) goes into the
    PNG's metadata, so a test can check a figure's structure without pixels."""
    panels = sum(ax.get_label() != "<colorbar>" for ax in fig.axes)
    fmt = Path(path).suffix[1:]  # png, pdf or svg
    meta = {"pdf": {"Subject": f"panels={panels}"}}.get(fmt, {"Description": f"panels={panels}"})
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight", metadata=meta)
    finally:
        plt.close(fig)
