"""Interactive figures of the HTML report (plotly): heads as points with every value on hover,
layer x head heatmaps. Each returns an HTML fragment; plotly.js itself is embedded once by
report.html."""

from __future__ import annotations

import numpy as np
import pandas as pd

from headplast.analysis.stats import combined
from headplast.analysis.names import pair_name
from headplast.store import schema

CONFIG = {"displaylogo": False, "responsive": True}


def _hover(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """One hover text per head: its layer, head and every value."""
    return [f"<b>layer {int(r.layer)}, head {int(r.head)}</b><br>"
            + "<br>".join(f"{c} = {getattr(r, c):.4g}" for c in columns if pd.notna(getattr(r, c)))
            for r in df.itertuples(index=False)]


def side_by_side_scatter(dfs: dict[str, pd.DataFrame], x: str, y: str, stats: dict, div_id: str) -> str:
    """One panel per run: y vs x per head, coloured by layer, ρ and its CI in the panel's title."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = []
    for lab in dfs:
        p = stats[lab]["pairs"].get(pair_name(x, y))
        lo, hi = combined(p)["ci95"] if p else (None, None)  # the answer's interval: layer blocks ∪ examples
        titles.append(f"{lab}: ρ = {p['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}]" if p else lab)
    fig = make_subplots(rows=1, cols=len(dfs), subplot_titles=titles, horizontal_spacing=0.08)
    for i, (lab, df) in enumerate(dfs.items(), start=1):
        cols = [c for c in df.columns if c not in ("layer", "head")]
        fig.add_trace(go.Scatter(x=df[x], y=df[y], mode="markers", name=lab, hovertext=_hover(df, cols),
                                 hoverinfo="text", marker=dict(color=df["layer"], colorscale="Viridis", size=8,
                                                               line=dict(width=0.5, color="black"),
                                                               showscale=i == len(dfs),
                                                               colorbar=dict(title="layer"))), row=1, col=i)
        for axis, col in (("x", x), ("y", y)):
            vals = df[col].to_numpy(float)
            log = col in schema.log_columns() and bool((vals[np.isfinite(vals)] > 0).all())
            update = fig.update_xaxes if axis == "x" else fig.update_yaxes
            update(title_text=schema.labels().get(col, col), type="log" if log else "linear", row=1, col=i)
    fig.update_layout(height=420, showlegend=False, margin=dict(t=50, b=40, l=50, r=20))
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG)


def heatmaps(dfs: dict[str, pd.DataFrame], columns: list[str], div_id: str) -> str:
    """Layer x head maps: one row per run, one column per value."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = [f"{lab}: {c}" for lab in dfs for c in columns]
    fig = make_subplots(rows=len(dfs), cols=len(columns), subplot_titles=titles, vertical_spacing=0.12)
    for i, df in enumerate(dfs.values(), start=1):
        for j, c in enumerate(columns, start=1):
            z = df.pivot(index="layer", columns="head", values=c)
            fig.add_trace(go.Heatmap(z=z.to_numpy(float), x=list(z.columns), y=list(z.index), colorscale="Viridis",
                                     showscale=False, hovertemplate=f"layer %{{y}}, head %{{x}}<br>{c} = %{{z:.4g}}"
                                     "<extra></extra>"), row=i, col=j)
            fig.update_xaxes(title_text="head", dtick=1, row=i, col=j)
            fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed", row=i, col=j)
    fig.update_layout(height=260 * len(dfs) + 60, margin=dict(t=50, b=40, l=50, r=20))
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG)
