"""`headplast check-overlap RUN` measures the overlap again from the data, and fails when any remains."""

import pytest

from headplast.cli.main import main
from headplast.measure.config import MeasureConfig
from headplast.steps.measure_step import run_measure
from headplast.steps.overlap_step import check_overlap
from headplast.steps.train_step import run_train
from headplast.train.config import TrainConfig
from tiny import tiny_run_kwargs

pytestmark = pytest.mark.slow


def _run(model_dirs, root, **kw):
    d = run_train(TrainConfig(method="fft", **{**tiny_run_kwargs(model_dirs["bert"], root), **kw})).path
    run_measure(d, MeasureConfig(progress=False))
    return d


def test_measured_on_training_examples_is_reported_and_fails(model_dirs, tmp_path, capsys):
    # validation examples that are training examples (the same file): every one overlaps
    rows = [f"the film number {i} is {'good' if i % 2 else 'bad'} and worth a look\t{i % 2}" for i in range(40)]
    data = tmp_path / "mine.tsv"
    data.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    d = _run(model_dirs, tmp_path, task="mine", train_file=str(data), validation_file=str(data),
             text_columns=("sentence",), max_train_samples=None)
    r = check_overlap(d)
    assert r["any"] == r["examples"] == 12 and r["contained_in_training"] == 12
    assert r["matches_record"] is True and len(r["examples_overlapping"]) == 5
    assert main(["check-overlap", str(d)]) == 1
    assert "12 of 12 measured examples" in capsys.readouterr().out


def test_validation_examples_do_not_overlap(model_dirs, tmp_path, capsys):
    d = _run(model_dirs, tmp_path)
    assert main(["check-overlap", str(d)]) == 0
    assert "0 of 12 measured examples" in capsys.readouterr().out


def test_an_unmeasured_run_is_refused_with_the_fix(tmp_path, capsys):
    assert main(["check-overlap", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a trained run" in err and "headplast train" in err
