"""The figures of one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headplast.analysis.names import display_name, pair_name
from headplast.plotting.common import LABELS, layer_aware_ci, plt, save, scatter
from headplast.store import layout
from headplast.store.schema import plasticity_columns


def fig_importance_vs_update(df, stats, x, suptitle, path):
    """Two panels: U and Urel against an importance column (I_pre or I_post)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, y in zip(axes, ("U", "Urel")):
        scatter(ax, df, x, y, stats["pairs"].get(pair_name(x, y)), display_name(pair_name(y, x)))
    fig.suptitle(suptitle)
    save(fig, path)


def fig_i_vs_g(df, stats, title, path):
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, y in zip(axes.flat, ("grad_norm", "fisher", "gate_grad", "taylor")):
        scatter(ax, df, "I_pre", y, stats["pairs"].get(pair_name("I_pre", y)), display_name(pair_name(y, "I_pre")))
    fig.suptitle(f"{title}: importance vs gradient-based scores on theta0")
    save(fig, path)


def fig_stats(stats, title, path):
    pairs = stats["pairs"]
    names = [p for p in pairs if np.isfinite(pairs[p].get("spearman", np.nan))]
    rho = np.array([pairs[p]["spearman"] for p in names])
    lo = np.array([layer_aware_ci(pairs[p])[0] for p in names])
    hi = np.array([layer_aware_ci(pairs[p])[1] for p in names])
    part = np.array([pairs[p]["partial_spearman_layer"] for p in names])
    topk = np.array([pairs[p]["top_k"]["overlap"] for p in names])
    chance = np.array([pairs[p]["top_k"]["chance"] for p in names])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.arange(len(names))
    axes[0].bar(x, rho, color="tab:blue", label="Spearman ρ")
    # the interval as it is: a percentile interval need not hold the estimate (yerr would be negative)
    axes[0].errorbar(x, (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", ecolor="k", capsize=3,
                     label="95% CI: layer blocks ∪ examples")
    axes[0].scatter(x, part, color="tab:red", zorder=3, label="ρ controlled for layer")
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_ylabel("Spearman ρ over heads")
    axes[0].set_title("rank correlations")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, topk, color="tab:green", label=f"top-{stats['k']} overlap")
    axes[1].plot(x, chance, "k_", ms=18, mew=2, label="chance level")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel(f"|top-{stats['k']}(a) ∩ top-{stats['k']}(b)| / K")
    axes[1].set_title("top-K overlap")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels([display_name(n).replace(" vs ", " vs\n") for n in names], fontsize=7)
    fig.suptitle(f"{title}: statistics over {stats['n_heads']} heads")
    save(fig, path)


def fig_ipre_vs_ipost(df, stats, title, path):
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter(ax, df, "I_pre", "I_post", stats["pairs"].get(pair_name("I_pre", "I_post")), "importance after vs before")
    lim = [min(df.I_pre.min(), df.I_post.min()), max(df.I_pre.max(), df.I_post.max())]
    ax.plot(lim, lim, "k--", lw=0.8, label="y = x")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    save(fig, path)


def fig_heatmaps(df, title, path):
    L, H = int(df.layer.max()) + 1, int(df["head"].max()) + 1
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * L + 2.2))
    for ax, col in zip(axes, ("I_pre", "U", "I_post")):
        grid = np.full((L, H), np.nan)
        grid[df.layer.astype(int), df["head"].astype(int)] = df[col]
        if col == "U":
            im = ax.imshow(grid, aspect="auto", cmap="magma", origin="lower")
        else:  # importance can be negative: a diverging map centred on 0
            lim = float(np.nanmax(np.abs(grid))) or 1.0
            im = ax.imshow(grid, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, origin="lower")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(LABELS[col], fontsize=8)
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"{title}: layer x head maps")
    save(fig, path)


def fig_effect(df, stats, title, path):
    """Does a head's update matter? Its size (U) and importance against its effect on the loss."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    scatter(axes[0], df, "U", "effect_fwd", stats["pairs"].get(pair_name("U", "effect_fwd")), "update effect vs update size "
            "(colour: I_pre)", colour="I_pre")
    scatter(axes[1], df, "I_pre", "effect_fwd", stats["pairs"].get(pair_name("I_pre", "effect_fwd")), "update effect vs I_pre")
    for ax in axes:
        ax.axhline(0, color="k", lw=0.6)
    fig.suptitle(f"{title}: how much of fine-tuning's gain does each head's own update carry?")
    save(fig, path)


def fig_change_measures(df, stats, title, path):
    """Importance before fine-tuning against every measure of how much a head changed that the run
    has (the schemas' plasticity columns): its weights (U), circuits (qk_rel, ov_rel) and function
    (func_change, attn_jsd)."""
    ys = [y for y in plasticity_columns() if y in df]
    cols = min(3, len(ys))
    rows = -(-len(ys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, y in zip(axes.flat, ys):
        scatter(ax, df, "I_pre", y, stats["pairs"].get(pair_name("I_pre", y)), display_name(pair_name(y, "I_pre")))
    for ax in list(axes.flat)[len(ys):]:
        fig.delaxes(ax)
    fig.suptitle(f"{title}: does importance predict change, measured as weights, circuits or function?")
    save(fig, path)


def run_figures(df, stats, title: str, out: Path, fmt: str = "png") -> list[Path]:
    f = [out / n for n in layout.with_format(layout.RUN_FIGURES, fmt)]
    fig_importance_vs_update(df, stats, "I_pre", f"{title}: does importance before fine-tuning predict the "
                             "update?", f[0])
    fig_i_vs_g(df, stats, title, f[1])
    fig_stats(stats, title, f[2])
    fig_ipre_vs_ipost(df, stats, title, f[3])
    fig_importance_vs_update(df, stats, "I_post", f"{title}: importance after fine-tuning vs the update", f[4])
    fig_heatmaps(df, title, f[5])
    fig_effect(df, stats, title, f[6])
    fig_change_measures(df, stats, title, f[7])
    return f

