"""Code versions in keys: bumping a step's version redoes exactly it and what reads it."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from headplast.analysis.config import AnalysisConfig
from headplast.measure import registry
from headplast.measure.config import MeasureConfig
from headplast.measure.update import UPDATE
from headplast.steps import versions
from headplast.steps.analyse_step import run_analyse
from headplast.steps.measure_step import run_measure
from headplast.steps.train_step import run_train
from headplast.store import records
from headplast.store.io import text_key
from headplast.train.config import TrainConfig
from tiny import tiny_run_kwargs

pytestmark = pytest.mark.slow
QUIET = MeasureConfig(progress=False)
ANALYSIS = AnalysisConfig(n_boot=50, n_perm=20)


def test_version_one_keeps_the_keys_of_before_and_a_bump_changes_the_key():
    cfg, inputs = {"a": 1}, {"f": "hash"}
    assert records.step_key("s", cfg, inputs) == text_key({"step": "s", "config": cfg, "inputs": inputs})
    assert records.step_key("s", cfg, inputs, 2) != records.step_key("s", cfg, inputs, 1)
    for bad in (0, 1.0, True, "2"):
        with pytest.raises(ValueError, match="version"):
            records.step_key("s", cfg, inputs, bad)
    # every measurement and step has a version, and a declared one is what its key uses
    every = versions.every_version()
    assert set(every) >= {m.name for m in registry.MEASUREMENTS} | {"train", "compare", "aggregate", "ranks", "report"}
    assert every["update_geometry"] == versions.version_of("update_geometry") >= 2


@pytest.fixture(scope="module")
def measured(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    d = run_train(TrainConfig(method="fft", **tiny_run_kwargs(model_dirs["bert"], root))).path
    run_measure(d, QUIET)
    run_analyse(d, ANALYSIS)
    return d


def _bump(monkeypatch, m, **changes):
    bumped = dataclasses.replace(m, version=m.version + 1, **changes)
    monkeypatch.setattr(registry, "MEASUREMENTS", tuple(bumped if x.name == m.name else x
                                                        for x in registry.MEASUREMENTS))
    return bumped


def test_a_bumped_measurement_and_what_reads_it_rerun_and_nothing_else(measured, monkeypatch):
    d = measured
    run_measure(d, QUIET)
    run_analyse(d, ANALYSIS)
    assert set(run_measure(d, QUIET).timings.values()) == {"skipped"}
    # a fix that changes what `update` writes, without a bump: the old result would be reused
    doubled = lambda x: dataclasses.replace(UPDATE.compute(x), U=2 * UPDATE.compute(x).U)  # noqa: E731
    monkeypatch.setattr(registry, "MEASUREMENTS", tuple(dataclasses.replace(m, compute=doubled) if m.name == "update"
                                                        else m for m in registry.MEASUREMENTS))
    assert set(run_measure(d, QUIET).timings.values()) == {"skipped"}
    # with the bump: exactly update re-runs ...
    _bump(monkeypatch, UPDATE, compute=doubled)
    before = pd.read_csv(d / "heads.csv")
    timings = run_measure(d, QUIET).timings
    assert isinstance(timings.pop("update"), float)
    assert set(timings.values()) == {"skipped"}
    rec = records.read_record(d, "update")
    assert rec["version"] == UPDATE.version + 1 and rec["code"]["headplast"]
    # ... and the analysis, which reads it, is outdated and redone with the new numbers
    assert run_analyse(d, ANALYSIS).status == "ran"
    after = pd.read_csv(d / "heads.csv")
    np.testing.assert_allclose(after["U"], 2 * before["U"], rtol=1e-12)
    np.testing.assert_array_equal(after["I_pre"], before["I_pre"])
    assert run_analyse(d, ANALYSIS).status == "skipped"


def test_a_bumped_step_reruns_itself_only(measured, monkeypatch):
    d = measured
    run_measure(d, QUIET)  # whatever another test left: brought up to date first
    run_analyse(d, ANALYSIS)
    assert run_analyse(d, ANALYSIS).status == "skipped"
    monkeypatch.setitem(versions.STEPS, "analyse", versions.STEPS["analyse"] + 1)
    assert set(run_measure(d, QUIET).timings.values()) == {"skipped"}
    assert run_analyse(d, ANALYSIS).status == "ran"
    assert json.loads((d / ".steps" / "analyse.json").read_text())["version"] == versions.STEPS["analyse"]
    assert run_analyse(d, ANALYSIS).status == "skipped"
