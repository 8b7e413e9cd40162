"""--report-to: training and each run's headline measurements reach the tracker (tensorboard,
read back from its event files)."""

import json

import pytest

from headplast.analysis.names import PRIMARY, PRIMARY_PAIR
from headplast.errors import HeadplastError
from headplast.measure.config import MeasureConfig
from headplast.steps.analyse_step import run_analyse
from headplast.steps.measure_step import run_measure
from headplast.steps.train_step import run_train
from headplast.train.config import TrainConfig
from tiny import tiny_run_kwargs

pytestmark = pytest.mark.slow


def _scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_training_and_the_summary(model_dirs, tmp_path):
    pytest.importorskip("tensorboard")
    kw = tiny_run_kwargs(model_dirs["bert"], tmp_path)
    run = run_train(TrainConfig(method="fft", report_to="tensorboard", **kw)).path
    tb = run / "tensorboard"
    assert "train/loss" in _scalars(tb)  # Trainer's own logging, in the run's folder
    run_measure(run, MeasureConfig(progress=False))
    run_analyse(run)
    got = _scalars(tb)
    stats = json.loads((run / "stats.json").read_text())
    rc = json.loads((run / "run_config.json").read_text())
    p = stats["pairs"][PRIMARY_PAIR]
    assert got[f"headplast/{PRIMARY}"] == [pytest.approx(p["spearman"])]
    assert got[f"headplast/{PRIMARY}/ci95_low"] == [pytest.approx(p["ci95"][0])]
    assert got["headplast/validation/theta1"] == [pytest.approx(rc["validation"]["theta1"]["metric"])]
    assert got["headplast/reliability/I_pre"] == [pytest.approx(stats["reliability"]["I_pre"]["reliability"])]
    assert rc["tracking"] == {"report_to": "tensorboard", "run_name": "RTE/FFT/seed1", "log_dir": "tensorboard"}
    # the tracker is not part of what the run is: the same run without it is up to date
    assert run_train(TrainConfig(method="fft", **kw)).status == "skipped"


def test_a_missing_tracker_package_is_named(model_dirs, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(HeadplastError, match="pip install wandb"):
        run_train(TrainConfig(method="fft", report_to="wandb", **tiny_run_kwargs(model_dirs["bert"], tmp_path)))
    assert not (tmp_path / "FFT" / "RTE" / "seed1").exists()  # refused before anything was written
