"""Figures comparing two runs (FFT vs LoRA) of the same task and seed."""

from __future__ import annotations

import numpy as np

from headplast.analysis.names import PRIMARY_PAIR, display_name, pair_name
from headplast.analysis.stats import spearman
from headplast.plotting.common import layer_aware_ci, log_axes, plt, save, scatter

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def compare_i_vs_u(dfs, stats, path):
    fig, axes = plt.subplots(1, len(dfs), figsize=(5.5 * len(dfs), 4.3), sharex=True)
    for ax, (lab, df) in zip(np.atleast_1d(axes), dfs.items()):
        scatter(ax, df, "I_pre", "U", stats[lab]["pairs"].get(PRIMARY_PAIR), lab)
    fig.suptitle("Importance before fine-tuning vs update magnitude, per head")
    save(fig, path)


def _bars(ax, labels, groups, values, errs=None, ylabel="", title="", ref=None):
    x = np.arange(len(groups))
    w = 0.8 / len(labels)
    for i, lab in enumerate(labels):
        v = np.array(values[lab], float)
        e = None if errs is None else np.abs(np.array(errs[lab], float).T - v)
        ax.bar(x + i * w - 0.4 + w / 2, v, w, yerr=e, capsize=3, label=lab, color=COLORS[i])
    if ref is not None:
        ax.plot(x, ref, "k_", ms=25, mew=2, label="chance / independent")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def compare_stats(metrics, stats, path):
    labels = metrics["labels"]
    k = metrics["k"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    pre = [pair_name("I_pre", "U"), pair_name("I_pre", "Urel")]
    post = [pair_name("I_post", "U"), pair_name("I_post", "Urel"), pair_name("I_pre", "I_post")]
    for ax, names, title in ((axes[0, 0], pre, "(a) Spearman ρ: importance vs update"),
                             (axes[1, 1], post, "(d) after fine-tuning")):
        _bars(ax, labels, [display_name(n) for n in names],
              {lab: [stats[lab]["pairs"][n]["spearman"] for n in names] for lab in labels},
              {lab: [layer_aware_ci(stats[lab]["pairs"][n]) for n in names] for lab in labels},
              "Spearman ρ over heads (95% CI: layer blocks ∪ examples)", title)
    _bars(axes[0, 1], labels, [display_name(n) for n in pre],
          {lab: [stats[lab]["pairs"][n]["top_k"]["overlap"] for n in pre] for lab in labels},
          ylabel=f"top-{k} overlap (fraction)", title=f"(b) top-{k} overlap",
          ref=[metrics["topk_chance"]] * 2)
    keys = metrics["key_statistics"]
    _bars(axes[1, 0], labels, ["important-but-static", "plastic-but-unimportant"],
          {lab: [keys["n_important_but_static"][lab], keys["n_plastic_but_unimportant"][lab]] for lab in labels},
          ylabel="number of heads", title="(c) counter-examples", ref=[metrics["expected_cases"]] * 2)
    fig.suptitle(f"{' vs '.join(labels)}: {metrics['task']} seed {metrics['seed']}")
    save(fig, path)


def compare_update_dist(dfs, path):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for i, (lab, df) in enumerate(dfs.items()):
        for ax, col in zip(axes[:2], ("U", "Urel")):
            v = df[col].to_numpy(float)
            v = v[v > 0]
            ax.hist(np.log10(v), bins=25, alpha=0.55, color=COLORS[i], label=lab)
            ax.set_xlabel(f"log10 {col}")
            ax.set_ylabel("number of heads")
            ax.set_title(f"distribution of {col}")
        by_layer = df.groupby("layer")["U"].mean()
        axes[2].plot(by_layer.index, by_layer.values, "o-", color=COLORS[i], label=lab)
    log_axes(axes[2], x=False)
    axes[2].set_xlabel("layer")
    axes[2].set_ylabel("mean U over the layer's heads")
    axes[2].set_title("update magnitude by layer")
    for ax in axes:
        ax.legend(fontsize=8)
    save(fig, path)


def compare_headwise(dfs, path):
    (la, da), (lb, db) = dfs.items()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    da = da.assign(dI=da.I_post - da.I_pre)
    db = db.assign(dI=db.I_post - db.I_pre)
    for ax, col, log in zip(axes, ("U", "I_post", "dI"), (True, False, False)):
        x, y = da[col].to_numpy(float), db[col].to_numpy(float)
        sc = ax.scatter(x, y, c=da["layer"], cmap="viridis", s=22, edgecolors="k", linewidths=0.3)
        if log and (x > 0).all() and (y > 0).all():
            log_axes(ax)
        ax.set_xlabel(f"{col} under {la}")
        ax.set_ylabel(f"{col} under {lb}")
        name = {"U": "update magnitude U", "I_post": "importance after fine-tuning",
                "dI": "change in importance I_post − I_pre"}[col]
        ax.set_title(f"{name}\nsame head, two methods: ρ = {spearman(x, y):.2f}", fontsize=9)
    fig.colorbar(sc, ax=axes, label="layer")
    save(fig, path)



def compare_subspace(sub: dict, phi: np.ndarray, floors: dict, importance: np.ndarray, labels, path):
    """(a) phi per head (layer x head); (b) phi vs I_pre, with the noise floors and random subspaces."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    im = axes[0].imshow(phi, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_title(f"(a) subspace overlap φ of {' and '.join(labels)} (top-{sub['k']})", fontsize=10)
    fig.colorbar(im, ax=axes[0])
    ax = axes[1]
    ax.scatter(importance.ravel(), phi.ravel(), s=14, color=COLORS[0], label=f"φ({', '.join(labels)})")
    for i, (lab, f) in enumerate(floors.items()):
        ax.axhline(np.nanmean(f), color=COLORS[i + 1], ls="--", label=f"noise floor: {lab}, two seeds (mean)")
    ax.axhline(sub["random_subspaces"], color="grey", ls=":", label="random subspaces (k / 4d)")
    null = sub.get("random_within_parts") or {}
    if null.get("mean") is not None:
        ax.axhline(null["mean"], color="black", ls="-.", label="chance keeping each part's share (mean)")
    rho = sub["rho_I_pre_phi"]
    ax.set_title(f"(b) φ vs importance: ρ = {rho['spearman']:+.2f} [{rho['ci95'][0]:+.2f}, {rho['ci95'][1]:+.2f}] (heads as independent; exploratory)"
                 + ("" if floors else " (no second seed: no noise floor)"), fontsize=10)
    ax.set_xlabel("I_pre (loss increase when ablated, nats)")
    ax.set_ylabel("φ = ||U_aᵀU_b||²_F / min(k, ranks)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    save(fig, path)
