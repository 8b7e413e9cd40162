"""The self-contained HTML report of an output root (`headplast report`): jinja2 template, plotly
figures, DataTables for sorting and filtering (from itables' offline bundle), everything inline so
the file opens from file:// with no network. Text and tables are plain HTML (readable without
JavaScript); the figures and table sorting need it.

`render(data)` takes what steps.report_step collects (plain dicts and DataFrames) and returns the
page; nothing here reads or writes files of an output root.
"""

from __future__ import annotations

import base64
import math
from importlib import resources

import pandas as pd

from headplast.analysis.interactions import adds_up
from headplast.analysis.names import display_name, stat_of
from headplast.analysis.thresholds import RELIABILITY_BAR, unreliable
from headplast.report.findings import comparison_table
from headplast.report.headline import aggregate_lines, answer_lines, overlap_caution
from headplast.report.html_figures import heatmaps, side_by_side_scatter
from headplast.report.lines import rho_line
from headplast.store import schema

CASE_NAMES = {"important_but_static": "important-but-static", "plastic_but_unimportant": "plastic-but-unimportant",
              "moved_but_inert": "moved-but-inert", "small_but_decisive": "small-but-decisive"}


def _assets() -> dict:
    from plotly.offline import get_plotlyjs

    dt = resources.files("itables") / "html"
    return {"plotly_js": get_plotlyjs(), "dt_css": (dt / "dt_bundle.css").read_text(),
            "dt_js_b64": base64.b64encode((dt / "dt_bundle.js").read_bytes()).decode()}


def _num(v, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def cautions(compare: dict, runs: dict) -> list[str]:
    """Collapsed runs, measures whose split-half reliability is below the bar, eval examples that
    share text with training."""
    out = []
    for lab, key in compare["runs"].items():
        r = runs[key]
        if r["rc"].get("collapsed"):
            out.append(f"{lab} collapsed: its validation metric is no better than the majority class")
        for name, rel in r["stats"].get("reliability", {}).items():
            v = rel.get("reliability")
            if unreliable(v):
                out.append(f"{lab}: split-half reliability of {name} is {v:.2f} (< {RELIABILITY_BAR}): its "
                           "correlations are mostly noise")
        seen = overlap_caution(compare["metrics"]["runs"].get(lab, {}))
        if seen:
            out.append(f"{lab}: {seen}: importance after fine-tuning and the update effect are partly measured "
                       "on text the model was trained on")
    return out


def heads_table(dfs: dict, compare: dict, runs: dict) -> dict:
    """One row per head: the table columns of the measurements of theta0 (the same for both runs:
    I_pre), then per run ({label: heads table}) those of the others (update, importance after,
    effect, shape); the counter-examples each head is, per run."""
    labels = list(dfs)
    first = dfs[labels[0]]
    cols = ["layer", "head", *(c for c in schema.table_columns(shared=True) if c in first.columns)]
    table = first[cols].copy()
    per_run = [c for c in schema.table_columns(shared=False) if c in first.columns]
    for lab in labels:
        for c in per_run:
            if c in dfs[lab].columns:
                table[f"{c} {lab}"] = dfs[lab][c].to_numpy()
    flags = {(int(r.layer), int(r.head)): [] for r in first.itertuples()}
    for lab in labels:
        cases = runs[compare["runs"][lab]]["cases"]
        for kind, name in CASE_NAMES.items():
            for h in cases.get(kind, {}).get("heads", []):
                share = f" (share {h['share']:.2f}: tied at a quantile)" if "share" in h else ""
                flags[(h["layer"], h["head"])].append(f"{lab}: {name}{share}")
    table["counter-example"] = ["; ".join(flags[(int(r.layer), int(r.head))]) for r in first.itertuples()]
    rows = [{"cells": [_num(v) if c != "counter-example" else v for c, v in zip(table.columns, row)],
             "case": bool(row[-1])} for row in table.itertuples(index=False)]
    return {"columns": list(table.columns), "rows": rows}


INTERACTION_COLUMNS = ["", "joint (nats)", "sum of single heads", "ratio", "interaction", "95% CI", "adds up"]


def interactions_view(stats: dict) -> list[dict]:
    """Per run that has them (analysis.interactions): one row per layer and one for the model."""
    out = []
    for lab, st in stats.items():
        inter = st.get("interactions")
        if not inter:  # measured before update_joint existed
            continue
        rows = []
        for r in [*inter["layers"], inter["model"]]:
            ok = adds_up(r)
            rows.append(["whole model" if r["scope"] == "model" else f"layer {r['layer']}", _num(r["joint"], "+.4f"),
                         _num(r["sum_single"], "+.4f"), _num(r["ratio"], ".2f"), _num(r["interaction"], "+.4f"),
                         _ci_cell(r.get("ci95") or (None, None), "+.4f"), "" if ok is None else ("yes" if ok else "no")])
        out.append({"label": lab, "columns": INTERACTION_COLUMNS, "rows": rows})
    return out


GROUP_COLUMNS = ["", "ρ over K/V groups", "95% CI (layers)", "within-layer ρ", "95% CI (layers)", "groups"]


def kv_groups_view(stats: dict) -> list[dict]:
    """Per run of a grouped-query model (analysis.groups): each pair's ρ over K/V groups."""
    out = []
    for lab, st in stats.items():
        g = st.get("kv_groups")
        if not g:
            continue
        if "unknown" in g:  # the group size was not recorded and theta0 is gone
            out.append({"label": lab, "group_size": "?", "definition": g["unknown"], "columns": [], "rows": []})
            continue
        rows = []
        for name, p in g["pairs"].items():
            w = p["within_layer"]
            rows.append([display_name(name, "rho"), _num(p["spearman"], "+.3f"), _ci_cell(p["ci95_layers"]),
                         _num(w["spearman"], "+.3f"), _ci_cell(w["ci95_layers"]), str(p["n"])])
        out.append({"label": lab, "group_size": g["group_size"], "definition": g["definition"],
                    "columns": GROUP_COLUMNS, "rows": rows})
    return out


def _ci_cell(ci, fmt: str = "+.3f") -> str:
    lo, hi = ci
    return f"[{_num(lo, fmt)}, {_num(hi, fmt)}]"


def compare_view(compare: dict, runs: dict, n: int) -> dict:
    m = compare["metrics"]
    labels = list(compare["runs"])
    dfs = {lab: runs[compare["runs"][lab]]["heads"] for lab in labels}
    stats = {lab: runs[compare["runs"][lab]]["stats"] for lab in labels}
    figures = [side_by_side_scatter(dfs, "I_pre", "U", stats, f"scatter-u-{n}")]
    if all("effect_fwd" in df.columns for df in dfs.values()):
        figures.append(side_by_side_scatter(dfs, "I_pre", "effect_fwd", stats, f"scatter-effect-{n}"))
    maps = [c for c in schema.heatmap_columns() if all(c in df.columns for df in dfs.values())]
    figures.append(heatmaps(dfs, maps, f"heatmaps-{n}"))
    return {"id": f"cmp-{n}", "task": m["task"], "seed": m["seed"], "labels": labels,
            "answer": answer_lines(m), "cautions": cautions(compare, runs),
            "findings": m.get("findings", []), "validation": m["validation"], "figures": figures,
            "comparison": comparison_table(m) if "secondary" in m else None,
            "interactions": interactions_view(stats),
            "kv_groups": kv_groups_view(stats),
            "table": heads_table(dfs, compare, runs), "table_id": f"heads-{n}", "n_heads": m["n_heads"]}


def _mean_ci_cell(v: dict) -> str:
    """'mean [95% CI] (n=...)'; a single seed (or none) has no interval."""
    lo, hi = v["ci95"]
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) and math.isfinite(hi) else " (no CI)"
    return f"{v['mean']:+.3f}{ci} (n={v['n']})"


def aggregate_view(m: dict) -> dict:
    """Every Spearman correlation across seeds, per method: mean [95% CI] (n seeds)."""
    methods = [lab for lab in m["methods"] if m["per_method"].get(lab)]
    stats = sorted({s for lab in methods for s in m["per_method"][lab] if stat_of(s) == "rho"})
    rows = []
    for s in stats:
        cells = [s]
        for lab in methods:
            v = m["per_method"][lab].get(s)
            cells.append("" if not v else _mean_ci_cell(v))
        rows.append(cells)
    return {"task": m["task"], "seeds": m["seeds"], "columns": ["statistic", *methods], "rows": rows,
            "excluded": m.get("excluded_runs", []), "answer": aggregate_lines(m)}


def table_view(df: pd.DataFrame) -> dict:
    return {"columns": list(df.columns), "rows": [[_num(v) for v in row] for row in df.itertuples(index=False)]}


def provenance_view(key: str, r: dict) -> dict:
    rc = r["rc"]
    seconds = {"train": rc.get("seconds", {}).get("train")}
    seconds.update({name: v.get("seconds") for name, v in r.get("measure", {}).get("measurements", {}).items()})
    return {"key": key, "label": rc["label"], "task": rc["run"]["task"], "seed": rc["run"]["seed"],
            "config": sorted((k, str(v)) for k, v in rc["config"].items()),
            "versions": rc.get("versions", {}), "hardware": rc.get("hardware", {}), "git": rc.get("git_commit"),
            "hashes": {"theta0": rc.get("theta0_hash"), "theta1": rc.get("theta1_hash")},
            "seconds": {k: _num(v, ".1f") for k, v in seconds.items()}, "command": rc.get("command", "")}


def render(data: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("headplast.report", "templates"),
                             autoescape=jinja2.select_autoescape(default=True))
    compares = [compare_view(c, data["runs"], i) for i, c in enumerate(data["compares"])]
    compared = {k for c in data["compares"] for k in c["runs"].values()}
    page = env.get_template("report.html.j2").render(
        root=data["root"], generated=data["generated"], version=data["version"], compares=compares,
        aggregates=[aggregate_view(m) for m in data["aggregates"]],
        ranks=[{"where": w, **table_view(df)} for w, df in data["ranks"]],
        other_runs=[{"key": k, "label": r["rc"]["label"], "rho": rho_line(r["stats"])} for k, r in data["runs"].items()
                    if k not in compared],
        provenance=[provenance_view(k, r) for k, r in data["runs"].items()], **_assets())
    return page
