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
    real = common.plt.Axes.errorbar

    def spy(ax, x, y, *a, yerr=None, **kw):
        bars["lo"], bars["hi"] = float(y[0] - yerr[0]), float(y[0] + yerr[0])
        return real(ax, x, y, *a, yerr=yerr, **kw)

    monkeypatch.setattr(common.plt.Axes, "errorbar", spy)
    stats = {"pairs": {"I_pre~U": PAIR}, "k": 7, "n_heads": 72}
    run_plots.fig_stats(stats, "t", tmp_path / "f.png")
    assert abs(bars["lo"] - (-0.10)) < 1e-12 and abs(bars["hi"] - 0.60) < 1e-12
    # an interval that does not hold the estimate is drawn as it is (a negative yerr raised before)
    off = {**PAIR, "ci95_layers": [0.35, 0.5], "ci95_examples": None}
    run_plots.fig_stats({**stats, "pairs": {"I_pre~U": off}}, "t", tmp_path / "g.png")
    assert abs(bars["lo"] - 0.35) < 1e-12 and abs(bars["hi"] - 0.5) < 1e-12


def test_text_lines_and_report_titles_show_the_layer_aware_interval():
    from headplast.report.lines import rho_line

    line = rho_line({"pairs": {"I_pre~U": PAIR}})
    assert "[-0.100, 0.600]" in line and "0.200, 0.400" not in line


def test_a_run_measured_before_a_later_measurement_still_reads(tmp_path):
    """circuit_update was added after runs were measured: runs without it still analyse, compare
    and report (it is computed by default, not required to read)."""
    from headplast.cli.main import main
    from headplast.measure import registry
    from headplast.steps.runs import is_measured
    from synthetic import make_run

    assert "circuit_update" not in {m.name for m in registry.required()}
    dirs = [make_run(tmp_path, lab, 1, without=("circuit_update",)) for lab in ("FFT", "LoRA_r8")]
    assert all(is_measured(d) and not (d / "circuit_update.jsonl").exists() for d in dirs)
    assert main(["plot", str(dirs[0]), "--n-boot", "50", "--n-perm", "20"]) == 0
    assert main(["compare", "--output-root", str(tmp_path), "--task", "RTE", "--seed", "1", "--labels", "FFT",
                 "LoRA_r8", "--n-boot", "50", "--n-perm", "20"]) == 0
    assert main(["report", "--output-root", str(tmp_path), "--out", str(tmp_path / "mine.html")]) == 0
    assert main(["report", "--output-root", str(tmp_path), "--out", str(tmp_path / "mine.html")]) == 0  # skipped
    summary = next(tmp_path.glob("COMPARE/*/seed1/compare_summary.txt")).read_text()
    assert "Circuit updates" not in summary
