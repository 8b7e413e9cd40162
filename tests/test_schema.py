"""One schema per measurement (headplast.store.schema), all the way to the report: the
downstream layers read the torch-free schemas, and a measurement declared here reaches the
comparison, its summary, the report's heads table and the --rank-by choices with no other edit."""

import json
import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from headplast.cli.main import build_parser, main
from headplast.measure import registry
from headplast.measure.declare import Measurement
from headplast.measure.results import HeadTable
from headplast.store import schema
from synthetic import make_run

FAST = ["--n-boot", "200", "--n-perm", "50", "--n-boot-examples", "50"]


@pytest.mark.parametrize("modules", ["headplast.report, headplast.plotting", "headplast.analysis",
                                     "headplast.report.html, headplast.report.compare_summary, "
                                     "headplast.plotting.run_plots, headplast.plotting.compare_plots"])
def test_the_downstream_layers_import_without_torch(modules):
    code = f"import sys, {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_measurement_is_its_schema_with_a_compute_part():
    assert [m.name for m in registry.MEASUREMENTS] == [s.name for s in schema.SCHEMAS]
    for m in registry.MEASUREMENTS:
        assert m.schema == schema.get(m.name) and m.result.head_fields() == m.fields


# what the schemas give, as the hand-written lists before them said
@pytest.mark.parametrize("derived, expected", [
    (schema.compare_pairs, (("I_pre", "U"), ("I_pre", "Urel"), ("I_post", "U"), ("I_post", "Urel"), ("I_pre", "I_post"),
                            ("I_pre", "effect_fwd"), ("U", "effect_fwd"), ("I_post", "effect_rev"), ("U", "effect_rev"),
                            ("I_pre", "qk_rel"), ("I_pre", "ov_rel"), ("I_post", "qk_rel"), ("I_post", "ov_rel"),
                            ("I_pre", "func_change"), ("I_post", "func_change"), ("U", "func_change"),
                            ("I_pre", "attn_jsd"))),
    (lambda: schema.table_columns(shared=True), ("I_pre",)),
    (lambda: schema.table_columns(shared=False), ("U", "Urel", "I_post", "effect_fwd", "effect_rev", "srank",
                                                  "qk_rel", "ov_rel", "func_change", "attn_jsd")),
    (schema.heatmap_columns, ("I_pre", "U", "I_post", "effect_fwd", "func_change")),
    (lambda: tuple(__import__("headplast.train.lora", fromlist=["RANK_BY"]).RANK_BY),
     ("uniform", "I_pre", "U", "effect_fwd")),
    (schema.stat_pairs, registry.stat_pairs()),
])
def test_the_schemas_give_what_the_lists_before_them_said(derived, expected):
    assert tuple(derived()) == tuple(expected)


@pytest.mark.parametrize("bad, match", [
    (dict(table=("nope",)), "table"), (dict(rank_by=("nope",)), "rank_by"), (dict(needs=("theta2",)), "needs")])
def test_a_schema_names_only_its_own_columns_and_known_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        schema.Schema("w", ("w",), **{"needs": ("theta0",), **bad})


@dataclass(frozen=True)
class NormResult(HeadTable):
    w0_norm: np.ndarray


NORM = schema.Schema("w0_norm", ("w0_norm",), needs=("theta0",), labels={"w0_norm": "||W0_head||"},
                     pairs=(("I_pre", "w0_norm"),), compare=(("I_pre", "w0_norm"),), table=("w0_norm",),
                     heatmap=("w0_norm",), rank_by=("w0_norm",))


def test_the_compute_part_must_match_its_schema():
    @dataclass(frozen=True)
    class Other(HeadTable):
        other: np.ndarray

    with pytest.raises(ValueError, match="fields"):
        Measurement.of(NORM, Other, lambda x: None)


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    """Synthetic FFT and LoRA runs that have the measurement declared here (written as the measure
    step lays it out), compared and reported with it registered."""
    root = tmp_path_factory.mktemp("declared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema, "SCHEMAS", schema.SCHEMAS + (NORM,))
        mp.setattr(registry, "MEASUREMENTS", registry.MEASUREMENTS + (Measurement.of(NORM, NormResult, None),))
        for label, coupling in (("FFT", 1.0), ("LoRA_r8", 0.2)):
            make_run(root, label, 1, coupling=coupling)
            assert main(["plot", "--task", "RTE", "--seed", "1", "--method-label", label, "--output-root", str(root),
                         *FAST]) == 0
        assert main(["compare", "--seed", "1", "--lora-r", "8", "--output-root", str(root), *FAST]) == 0
        assert main(["report", "--output-root", str(root)]) == 0
        parser = build_parser()
    d = root / "COMPARE" / "RTE" / "seed1"
    return {"metrics": json.loads((d / "compare_metrics.json").read_text()),
            "summary": (d / "compare_summary.txt").read_text(), "report": (root / "report.html").read_text(),
            "parser": parser}


def _rank_choices(parser) -> list[str]:
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    return next(a.choices for a in train._actions if "--rank-by" in a.option_strings)


def _heads_header(page: str) -> str:
    return re.search(r'<table class="heads[^>]*id="heads-0">.*?</tr>', page, re.S).group(0)


def _section_order(summary: str) -> list[str]:
    """The last sections of compare_summary.txt, from the declared measurement's on, numbered in order."""
    titles = re.findall(r"^## (\d+)\. (.*)$", summary, re.M)
    assert [int(n) for n, _ in titles] == list(range(1, len(titles) + 1))
    names = [t for _, t in titles]
    start = next(i for i, t in enumerate(names) if "w0_norm" in t)
    return [next(k for k in ("Spearman correlation (w0_norm)", "What importance adds beyond the gradient",
                             "Shape of the updates", "Main findings") if t.startswith(k)) for t in names[start:]]


@pytest.mark.parametrize("where, found", [
    ("compare_metrics.json", lambda o: {"FFT", "LoRA_r8", "difference", "ci95"}
     <= set(o["metrics"]["key_statistics"]["rho(I_pre,w0_norm)"])),
    ("compare_metrics.json stats", lambda o: "I_pre~w0_norm" in o["metrics"]["stats"]["FFT"]["pairs"]),
    ("compare_summary.txt", lambda o: _section_order(o["summary"]) == [
        "Spearman correlation (w0_norm)", "What importance adds beyond the gradient", "Shape of the updates",
        "Main findings"] and "Spearman correlation (w0_norm)\n  ρ(I_pre, w0_norm):" in o["summary"]),
    ("report heads table", lambda o: ">w0_norm<" in _heads_header(o["report"])),
    ("report heatmaps", lambda o: "FFT: w0_norm" in o["report"]),
    ("--rank-by choices", lambda o: "w0_norm" in _rank_choices(o["parser"])),
])
def test_a_measurement_declared_here_reaches(declared, where, found):
    assert found(declared), where
