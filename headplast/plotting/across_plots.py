"""Figures across seeds and across LoRA ranks."""

from __future__ import annotations

import numpy as np

from headplast.analysis.across import HEADLINE
from headplast.plotting.common import plt, save

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def multi_seed_figure(table, summary, path, task):
    methods = list(summary["per_method"])
    fig, axes = plt.subplots(3, 3, figsize=(14, 11))
    for ax, stat in zip(axes.flat, HEADLINE):
        for i, m in enumerate(methods):
            sub = table[(table.method == m) & (table.statistic == stat)]
            jitter = np.linspace(-0.12, 0.12, max(len(sub), 1))[: len(sub)]
            ax.scatter(i + jitter, sub.value, color=COLORS[i % 6], alpha=0.6,
                       marker="o" if sub.included.all() else "x", label="per seed" if i == 0 else None)
            d = summary["per_method"][m].get(stat)
            if d and np.isfinite(d["mean"]):
                lo, hi = d["ci95"]
                err = None if not np.isfinite(lo) else [[d["mean"] - lo], [hi - d["mean"]]]
                ax.errorbar(i + 0.3, d["mean"], yerr=err, fmt="D", color="k", capsize=4,
                            label="mean, 95% CI" if i == 0 else None)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, fontsize=8)
        ax.set_title(stat, fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{task}: statistics per seed (points) with mean and 95% CI (x = collapsed run)")
    save(fig, path)


def rank_figures(table, dfs, fft, out, task, seed, fmt: str = "png"):
    stats = [s for s in HEADLINE if s in table]
    fig, axes = plt.subplots(3, 3, figsize=(14, 11))
    for ax, s in zip(axes.flat, stats):
        ax.plot(table["rank"], table[s], "o-", label="LoRA")
        if fft is not None and s in fft["flat"]:
            ax.axhline(fft["flat"][s], color="k", ls="--", label="FFT")
        ax.set_xscale("log", base=2)
        ax.set_xticks(table["rank"])
        ax.set_xticklabels(table["rank"])
        ax.set_xlabel("LoRA rank r")
        ax.set_title(s, fontsize=9)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{task} seed {seed}: statistics and validation metric as functions of the LoRA rank")
    save(fig, out / f"rank_stats.{fmt}")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    data = [np.log10(np.clip(df["U"].to_numpy(float), 1e-12, None)) for df in dfs.values()]
    names = list(dfs)
    if fft is not None:
        data.append(np.log10(np.clip(fft["df"]["U"].to_numpy(float), 1e-12, None)))
        names.append("FFT")
    ax.boxplot(data)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels(names)
    ax.set_ylabel("log10 U per head")
    ax.set_title(f"{task} seed {seed}: distribution of head update magnitudes by rank")
    save(fig, out / f"rank_update_dist.{fmt}")
