"""The figures show the interval the answer uses (layer blocks ∪ examples), never the
heads-as-independent one."""

import matplotlib

matplotlib.use("Agg")

from headplast.analysis.stats import combined  # noqa: E402
from headplast.plotting import common, run_plots  # noqa: E402

PAIR = {"spearman": 0.30, "ci95": [0.20, 0.40], "ci95_layers": [-0.10, 0.55], "ci90_layers": [-0.05, 0.5],
        "ci95_examples": [0.05, 0.60], "ci90_examples": [0.1, 0.55], "p_layers": 0.2, "p_examples": 0.03,
        "tost_p_layers": 0.6, "tost_p_examples": 0.5, "partial_spearman_layer": 0.2,
        "top_k": {"overlap": 0.3, "chance": 0.2}}


def test_scatter_text_shows_the_layer_aware_interval():
    text = common.fmt_rho(PAIR)
    assert "[-0.10, 0.60]" in text and "0.20, 0.40" not in text
    assert combined(PAIR)["ci95"] == [-0.10, 0.60]
    assert "interval n/a" in common.fmt_rho({"spearman": 0.3, "ci95": [0.2, 0.4]})  # no layer-aware interval


def test_stats_figure_error_bars_are_the_layer_aware_interval(tmp_path, monkeypatch):
    bars = {}
    real = common.plt.Axes.bar

    def spy(ax, x, h, *a, yerr=None, **kw):
        if yerr is not None:
            bars["yerr"] = [list(map(float, e)) for e in yerr]
        return real(ax, x, h, *a, yerr=yerr, **kw)

    monkeypatch.setattr(common.plt.Axes, "bar", spy)
    stats = {"pairs": {"I_pre~U": PAIR}, "k": 7, "n_heads": 72}
    run_plots.fig_stats(stats, "t", tmp_path / "f.png")
    lo, hi = bars["yerr"][0][0], bars["yerr"][1][0]
    assert abs((0.30 - lo) - (-0.10)) < 1e-12 and abs((0.30 + hi) - 0.60) < 1e-12


def test_text_lines_and_report_titles_show_the_layer_aware_interval():
    from headplast.report.lines import rho_line

    line = rho_line({"pairs": {"I_pre~U": PAIR}})
    assert "[-0.100, 0.600]" in line and "0.200, 0.400" not in line
