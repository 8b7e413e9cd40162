"""One definition of each threshold and name (issue 31, item 3): the reliability bar, "collapsed",
the names of a pair's statistics, LoRA's default alpha, flags that cannot collide, labels that
round-trip."""

import argparse
import inspect
import math
from dataclasses import dataclass

import pytest

from headplast.analysis import thresholds
from headplast.analysis.names import PRIMARY, PRIMARY_PAIR, display_name, pair_name, split_name
from headplast.errors import HeadplastError
from headplast.options import option
from headplast.store import layout
from headplast.train.lora import RANK_BY


# --- "unreliable": one bar -------------------------------------------------------------------

def _compare_metrics(rel: float, collapsed=(False, False), val=(0.7, 0.72), majority=0.5) -> dict:
    pair = {"spearman": 0.1, "ci95": [-0.1, 0.3], "within_layer_perm_p": 0.4}
    stats = {"pairs": {PRIMARY_PAIR: pair}, "reliability": {"I_pre": {"reliability": rel}}}
    key = {"FFT": 0.1, "LoRA_r8": 0.1, "difference": 0.0, "ci95": [-0.2, 0.2], "p_value": 1.0}
    count = {"FFT": 2, "LoRA_r8": 2, "difference": 0, "ci95": [-2, 2], "p_value": 1.0}
    return {"labels": ["FFT", "LoRA_r8"], "stats": {"FFT": stats, "LoRA_r8": stats},
            "key_statistics": {PRIMARY: key, "n_important_but_static": count, "n_plastic_but_unimportant": count},
            "validation": {"FFT": val[0], "LoRA_r8": val[1], "metric_name": "accuracy", "theta0": 0.5,
                           "majority": majority},
            "runs": {"FFT": {"collapsed": collapsed[0]}, "LoRA_r8": {"collapsed": collapsed[1]}},
            "secondary": {"tests": {}}}


@pytest.mark.parametrize("rel", [0.6, 0.79])
def test_every_caution_calls_the_same_reliability_unreliable(rel):
    """Below the one bar (0.8): the findings, the headline and the HTML report all say so."""
    from headplast.report.findings import findings
    from headplast.report.headline import method_line
    from headplast.report.html import cautions

    assert rel < thresholds.RELIABILITY_BAR
    m = _compare_metrics(rel)
    assert any("unreliable" in line for line in findings(m))
    assert "I_pre reliability only" in method_line("FFT", m["stats"]["FFT"], m["runs"]["FFT"])
    runs = {"a": {"rc": {}, "stats": m["stats"]["FFT"]}, "b": {"rc": {}, "stats": m["stats"]["LoRA_r8"]}}
    compare = {"runs": {"FFT": "a", "LoRA_r8": "b"}, "metrics": {"runs": {}}}
    assert any("split-half reliability of I_pre" in c for c in cautions(compare, runs))


def test_reliability_at_the_bar_or_unknown_is_not_a_caution():
    from headplast.report.findings import findings

    for rel in (thresholds.RELIABILITY_BAR, 0.95, math.nan):
        assert not any("unreliable" in line for line in findings(_compare_metrics(rel)))


def test_no_threshold_of_its_own_in_the_report():
    import headplast.report.findings as f
    import headplast.report.headline as h
    import headplast.report.html as html

    for mod in (f, h, html):
        src = inspect.getsource(mod)
        assert "< 0.5" not in src and "< 0.8" not in src and "RELIABILITY_BAR = " not in src


# --- "collapsed": one rule, recorded once ----------------------------------------------------

def test_collapsed_rule():
    assert thresholds.collapsed(0.5, 0.5) and thresholds.collapsed(0.5 + 1e-12, 0.5)
    assert thresholds.collapsed(0.4, 0.5) and not thresholds.collapsed(0.51, 0.5)


def test_findings_read_what_the_run_recorded():
    from headplast.report.findings import findings

    said = [line for line in findings(_compare_metrics(0.9, collapsed=(False, True))) if "collapsed" in line]
    assert len(said) == 1 and "LoRA_r8 is collapsed" in said[0]
    # a comparison file without the recorded flag: the same rule on its validation metrics
    m = _compare_metrics(0.9, val=(0.5, 0.8), majority=0.5)
    for r in m["runs"].values():
        del r["collapsed"]
    said = [line for line in findings(m) if "collapsed" in line]
    assert len(said) == 1 and "FFT is collapsed" in said[0]


def test_training_records_collapsed_by_the_same_rule():
    from headplast.steps import train_step

    src = inspect.getsource(train_step._train)
    assert "thresholds.collapsed(" in src and "1e-9" not in src


# --- one name per statistic ------------------------------------------------------------------

def test_names_are_made_and_read_back_in_one_place():
    assert pair_name("I_pre", "U") == "I_pre~U" == PRIMARY_PAIR  # stats.json's key, as on disk
    assert pair_name("I_pre", "U", "rho") == "rho(I_pre,U)" == PRIMARY  # compare_metrics.json's key, as on disk
    for name in ("I_pre~U", "rho(I_pre,U)", "rho/I_pre~U"):  # the three spellings of before
        assert split_name(name)[1:] == ("I_pre", "U")
    assert split_name("partial_rho(I_pre,effect_fwd)") == ("partial_rho", "I_pre", "effect_fwd")
    assert display_name(PRIMARY) == "ρ(I_pre, U)" == display_name(PRIMARY_PAIR, "rho")
    assert display_name("rho_within_layer(I_pre,U)") == "within-layer ρ(I_pre, U)"
    assert display_name("I_post~U") == "I_post vs U"
    with pytest.raises(ValueError):
        pair_name("I_pre~x", "U")


def test_tracker_and_summary_use_the_names():
    from headplast.report.lines import rho_line
    from headplast.steps.tracking import mlflow_name, summary_metrics

    stats = {"pairs": {PRIMARY_PAIR: {"spearman": 0.25, "ci95": [0.1, 0.4]}}, "reliability": {}}
    rc = {"validation": {"theta0": {"metric": 0.5}, "theta1": {"metric": 0.7}, "majority_baseline": 0.5}}
    got = summary_metrics(stats, rc)
    assert got[PRIMARY] == 0.25 and got[f"{PRIMARY}/ci95_low"] == 0.1
    assert mlflow_name(f"{PRIMARY}/ci95_low") == "rho_I_pre_vs_U/ci95_low"
    assert rho_line(stats).startswith("ρ(I_pre, U) = 0.250")


def test_no_hand_spelled_pair_names_left():
    """Every spelling of a pair's name comes from analysis.names (grep of the package)."""
    import re
    from pathlib import Path

    import headplast

    pkg = Path(headplast.__file__).parent
    bad = re.compile(r"""["'](rho/)?I_pre~U|["']rho\(I_pre,U\)|f["']rho\(\{|f["']\{x\}~\{y\}|split\(["']~["']\)""")
    hits = [f"{p.relative_to(pkg)}:{i}" for p in pkg.rglob("*.py") if p.name != "names.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits


# --- LoRA's alpha: one default ---------------------------------------------------------------

@pytest.mark.parametrize("r", [4, 8, 16])
def test_lora_alpha_defaults_to_twice_the_rank_in_train_and_pipeline(r):
    from headplast.steps.pipeline import PipelineConfig
    from headplast.train.config import TrainConfig
    from headplast.train.recipes import resolve

    train, sources = resolve(TrainConfig(task="RTE", method="lora", lora_r=r))
    assert train.lora_alpha == 2.0 * r and "lora_alpha" in sources
    (piped,) = [c for c in PipelineConfig(ranks=(r,), methods=("lora",)).run_configs("RTE", 1)]
    assert resolve(piped)[0].lora_alpha == 2.0 * r
    assert resolve(TrainConfig(method="lora", lora_r=r, lora_alpha=3.0))[0].lora_alpha == 3.0  # given: kept


def test_default_runs_keep_their_identity():
    """The default experiment's runs (FFT, LoRA r 8) keep lora_alpha 16 in what identifies them."""
    from headplast.steps.pipeline import PipelineConfig
    from headplast.train.recipes import resolve

    for cfg in PipelineConfig().run_configs("SST-2", 1):
        assert resolve(cfg)[0].run_fields()["lora_alpha"] == 16.0


# --- flags: distinct names, no silent collision ---------------------------------------------

@dataclass(frozen=True)
class _A:
    batch_size: int = option(1, "one")


@dataclass(frozen=True)
class _B:
    batch_size: int = option(2, "the other")


def test_two_options_of_one_name_fail_when_the_parser_is_built():
    from headplast.cli.options import FlagCollision, add_config_args

    p = argparse.ArgumentParser()
    add_config_args(p, _A)
    with pytest.raises(FlagCollision, match="--batch-size"):
        add_config_args(p, _B, dest_prefix="b_")


def test_the_cli_builds_and_batch_sizes_have_distinct_names(capsys):
    from headplast.cli.main import _measure_config, build_parser

    p = build_parser()
    for cmd in ("pipeline", "sweep"):
        a = p.parse_args([cmd, "--train-batch-size", "8", "--measure-batch-size", "4"])
        assert (a.batch_size, _measure_config(a).batch_size) == (8, 4)
        assert capsys.readouterr().err == ""
        a = p.parse_args([cmd, "--batch-size", "8"])  # the old name: training's, as it always was here
        assert (a.batch_size, _measure_config(a).batch_size) == (8, None)
        assert "--batch-size is deprecated: pass --train-batch-size" in capsys.readouterr().err
    assert p.parse_args(["train", "--batch-size", "7"]).batch_size == 7
    assert "deprecated" in capsys.readouterr().err
    assert p.parse_args(["measure", "--batch-size", "5"]).m_batch_size == 5  # the old name: measuring's here
    assert "--batch-size is deprecated: pass --measure-batch-size" in capsys.readouterr().err


# --- labels round-trip -----------------------------------------------------------------------

RUNS = [layout.RunId("SST-2", "fft", 1), layout.RunId("RTE", "lora", 2, 4), layout.RunId("SST-2", "lora", 1, 8),
        layout.RunId("SST-2", "lora", 3, 64)] + \
       [layout.RunId("SST-2", "lora", 1, 8, by) for by in RANK_BY if by != "uniform"]


@pytest.mark.parametrize("run", RUNS, ids=[r.label for r in RUNS])
def test_every_label_round_trips(run):
    assert layout.RunId.from_label(run.task, run.label, run.seed) == run


@pytest.mark.parametrize("label,parsed", [("lora8", ("lora", 8, None)), ("LoRA-r4", ("lora", 4, None)),
                                          ("fft", ("fft", None, None)), ("LoRA_r8_by_uniform", ("lora", 8, None))])
def test_label_spellings(label, parsed):
    assert layout.parse_label(label) == parsed


@pytest.mark.parametrize("label", ["FFT_by_I_pre", "LoRA", "LoRA_r8_by_", "r8"])
def test_unknown_labels_are_refused(label):
    with pytest.raises(HeadplastError):
        layout.parse_label(label)


def test_the_cli_shows_library_deprecation_warnings(tmp_path):
    """Python hides DeprecationWarning raised outside __main__; the CLI shows them (a library's
    deprecation is the first notice of a private API changing)."""
    import subprocess
    import sys

    code = ("import warnings\n"
            "from headplast.sweep.worker import show_deprecations\n"
            "show_deprecations()\n"
            "import importlib; mod = type(warnings)('fake_lib')\n"
            "exec(\"import warnings\\ndef f():\\n    warnings.warn('old api', DeprecationWarning, stacklevel=1)\", mod.__dict__)\n"
            "mod.f()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "DeprecationWarning: old api" in r.stderr
    plain = subprocess.run([sys.executable, "-c", code.replace("show_deprecations()\n", "")], capture_output=True, text=True)
    assert "old api" not in plain.stderr  # Python's default: hidden (what the CLI did before)
