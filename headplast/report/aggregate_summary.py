"""summary.txt of an aggregate across seeds."""

from __future__ import annotations

from headplast.analysis.across import HEADLINE
from headplast.report.headline import aggregate_lines


def _fmt_ci(d):
    lo, hi = d["ci95"]
    scale = ", mean and CI on Fisher's z scale" if d.get("scale") == "Fisher z" else ""
    return f"{d['mean']:+.4f} ± {d['std']:.4f} (95% CI [{lo:+.4f}, {hi:+.4f}], n={d['n']}{scale})"


def aggregate_summary(m) -> str:
    lines = ["=" * 60, f"Across seeds: {m['task']}, methods {', '.join(m['methods'])}, seeds {m['seeds']}",
             "=" * 60]
    if m["collapsed_runs"]:
        state = "excluded" if m["collapsed_excluded"] else "included"
        lines.append(f"Collapsed runs ({state}): " + ", ".join(f"{c['method']} seed {c['seed']}"
                                                              for c in m["collapsed_runs"]))
    for e in m.get("excluded_runs", []):
        lines.append(f"  excluded {e['method']} seed {e['seed']}: {e['reason']}")
    for meth in m.get("methods_without_runs", []):
        lines.append(f"{meth}: no run left to aggregate (every seed was excluded)")
    lines += ["", "## Answer (primary endpoint: ρ(I_pre, U) across heads and within layers; differences "
              "between methods are exploratory)"] + [f"  {line}" for line in aggregate_lines(m)]
    lines += ["", "Below: every statistic; the paired tests between methods are secondary (exploratory), their "
              "p-values Holm-adjusted over the statistics listed."]
    for s in HEADLINE:
        lines += ["", f"## {s}"]
        for meth in m["methods"]:
            d = m["per_method"][meth].get(s)
            if d:
                lines.append(f"  {meth}: {_fmt_ci(d)}")
        for pair, res in m["paired_tests"].items():
            t = res.get(s)
            if t:
                holm = t.get("t_p_holm")
                holm = f", Holm-adjusted {holm:.3g}" if holm is not None else ""
                z = " on Fisher z" if t.get("scale") == "Fisher z" else ""
                floor = t.get("wilcoxon_min_p")
                floor = (f"; with {t['n_pairs']} pairs Wilcoxon cannot go below p = {floor:.3g}"
                         if floor is not None and floor > 0.05 else "")
                lines.append(f"  {pair}: mean diff {t['mean_difference']:+.4f}, paired t{z} p = {t['t_p']:.3g}{holm}, "
                             f"Wilcoxon p = {t['wilcoxon_p']:.3g} (n = {t['n_pairs']}{floor}; exploratory)")
    lines += ["", "## head-level agreement across seeds"]
    for meth, ag in m["head_agreement"].items():
        for col, a in ag.items():
            lines.append(f"  {meth} {col}: mean pairwise Spearman {a['mean_pairwise_spearman']:.3f}, "
                         f"Kendall's W {a['kendalls_w']:.3f} ({a['n_seeds']} seeds)")
    return "\n".join(lines) + "\n"
