"""Bad input is refused before any work starts: exit 2, `headplast: error: ... fix: ...`, no
traceback, nothing built (no theta0) and nothing already written lost."""

from pathlib import Path

import pytest

from headplast.cli.main import main
from headplast.data.loaders import BUNDLED_DIR

NUMERIC = [
    (["train", "--eval-size", "0"], "--eval-size must be a finite number > 0 (got 0)"),
    (["train", "--eval-size", "-5"], "--eval-size must be a finite number > 0 (got -5)"),
    (["train", "--lora-r", "0"], "--lora-r must be a finite number > 0 (got 0)"),
    (["train", "--lora-r", "-4"], "--lora-r must be a finite number > 0 (got -4)"),
    (["train", "--learning-rate", "nan"], "--learning-rate must be a finite number > 0 (got nan)"),
    (["train", "--learning-rate", "-1"], "--learning-rate must be a finite number > 0 (got -1.0)"),
    (["train", "--train-batch-size", "0"], "--train-batch-size must be a finite number > 0 (got 0)"),
    (["train", "--max-train-samples", "0"], "--max-train-samples must be a finite number > 0 (got 0)"),
    (["train", "--num-epochs", "0"], "--num-epochs must be a finite number > 0 (got 0.0)"),
    (["train", "--warmup-ratio", "1.5"], "--warmup-ratio must be a finite number >= 0 and < 1 (got 1.5)"),
    (["pipeline", "--eval-size", "0"], "--eval-size must be a finite number > 0"),
    (["pipeline", "--lora-r", "0"], "--ranks must be a finite number > 0 (got 0)"),
    (["pipeline", "--num-epochs", "inf"], "--num-epochs must be a finite number > 0 (got inf)"),
    (["measure", "--eval-size", "-5"], "--eval-size must be a finite number > 0 (got -5)"),
    (["measure", "--measure-batch-size", "0"], "--measure-batch-size must be a finite number > 0"),
    (["compare", "--top-quantile", "1"], "--top-quantile must be a finite number > 0 and < 1 (got 1.0)"),
    (["aggregate", "--n-boot", "0"], "--n-boot must be a finite number > 0 (got 0)"),
    (["train", "--train-file", "x.csv"], "--train-file was given without --validation-file"),
]


@pytest.mark.parametrize("argv,message", NUMERIC, ids=[" ".join(a) for a, _ in NUMERIC])
def test_numeric_flags_are_checked_first(argv, message, tmp_path, capsys):
    assert main([*argv, "--output-root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headplast: error: ") and message in err and "  fix: " in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def _rte(tmp_path, n=40) -> Path:
    """A GLUE folder with the first n rows of the bundled RTE."""
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    for f in ("train.tsv", "dev.tsv"):
        lines = (BUNDLED_DIR / "RTE" / f).read_text(encoding="utf-8").splitlines(keepends=True)
        (d / f).write_text("".join(lines[:n + 1]), encoding="utf-8")
    return d


def _set_label(path: Path, row: int, label: str):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cells = lines[row].rstrip("\n").split("\t")
    lines[row] = "\t".join(cells[:-1] + [label]) + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def _extra_tab(path: Path, row: int):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[row] = lines[row].replace(" ", "\t", 1)
    path.write_text("".join(lines), encoding="utf-8")


def _keep(path: Path, n_lines: int):
    path.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n_lines]), encoding="utf-8")


DATA = [
    ("dev label outside the label set", lambda d: _set_label(d / "dev.tsv", 3, "2"),
     "dev.tsv line 4: label '2' is not a label of RTE (valid: entailment, not_entailment or their ids 0..1)"),
    ("train label contradiction", lambda d: _set_label(d / "train.tsv", 5, "contradiction"),
     "train.tsv line 6: label 'contradiction' is not a label of RTE"),
    ("train label 5", lambda d: _set_label(d / "train.tsv", 2, "5"), "train.tsv line 3: label '5' is not a label"),
    ("train label -1", lambda d: _set_label(d / "train.tsv", 2, "-1"), "train.tsv line 3: label '-1' is not a label"),
    ("row with an extra tab", lambda d: _extra_tab(d / "train.tsv", 7),
     "train.tsv: line 8 has 5 tab-separated columns, the header has 4"),
    ("empty train.tsv", lambda d: (d / "train.tsv").write_text(""), "train.tsv holds no examples (empty)"),
    ("header-only dev.tsv", lambda d: _keep(d / "dev.tsv", 1), "dev.tsv holds no examples (only a header)"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny import tiny_model_dir

    return tiny_model_dir("bert", tmp_path_factory.mktemp("m") / "bert")


@pytest.mark.parametrize("name,corrupt,message", DATA, ids=[c[0] for c in DATA])
@pytest.mark.parametrize("cmd", ["train", "pipeline"])
def test_bad_data_is_refused_before_theta0(cmd, name, corrupt, message, tiny_model, tmp_path, capsys):
    d = _rte(tmp_path)
    corrupt(d)
    out = tmp_path / "out"
    argv = [cmd, "--task", "RTE", "--model", str(tiny_model), "--data-dir", str(d.parent), "--data-source", "local",
            "--output-root", str(out), "--max-train-samples", "16", "--eval-size", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "  fix: " in err and "Traceback" not in err
    assert not (out / "_shared").exists() and not list(out.rglob("ckpt_init"))  # no theta0 was built


def _custom(tmp_path, train_rows, val_rows):
    tr, va = tmp_path / "train.csv", tmp_path / "val.csv"
    tr.write_text("sentence1,sentence2,label\n" + "".join(f"a {i},b {i},{y}\n" for i, y in enumerate(train_rows)))
    va.write_text("sentence1,sentence2,label\n" + "".join(f"c {i},d {i},{y}\n" for i, y in enumerate(val_rows)))
    return tr, va


def test_custom_validation_label_unseen_in_training(tiny_model, tmp_path, capsys):
    tr, va = _custom(tmp_path, ["pos", "neg"] * 8, ["pos", "neg", "neutral"])
    argv = ["train", "--task", "mydata", "--model", str(tiny_model), "--train-file", str(tr),
            "--validation-file", str(va), "--output-root", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "labels ['neutral'] do not occur in the training file" in err and "fix: use the same label" in err
    assert not (tmp_path / "out" / "_shared").exists()


def test_custom_row_with_a_stray_delimiter(tiny_model, tmp_path, capsys):
    tr, va = _custom(tmp_path, ["pos", "neg"] * 8, ["pos", "neg"])
    tr.write_text(tr.read_text() + "e,f,g,pos\n")
    argv = ["train", "--task", "mydata", "--model", str(tiny_model), "--train-file", str(tr),
            "--validation-file", str(va), "--output-root", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "line 18 has more fields than the header" in capsys.readouterr().err


def test_output_root_that_is_a_file(tiny_model, tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    for cmd in ("train", "pipeline"):
        assert main([cmd, "--model", str(tiny_model), "--output-root", str(f / "sub" if cmd == "train" else f)]) == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and "fix: pass a folder for --output-root" in err
    assert f.read_text() == "keep me"


@pytest.mark.slow
def test_force_with_bad_data_keeps_the_finished_run(tiny_model, tmp_path, capsys):
    d = _rte(tmp_path)
    out = tmp_path / "out"
    argv = ["train", "--task", "RTE", "--model", str(tiny_model), "--data-dir", str(d.parent), "--data-source", "local",
            "--output-root", str(out), "--max-train-samples", "16", "--eval-size", "8", "--num-epochs", "1",
            "--probe-epochs", "5"]
    assert main(argv) == 0
    run = out / "FFT" / "RTE" / "seed1"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _set_label(d / "train.tsv", 4, "maybe")
    assert main([*argv, "--force"]) == 2
    assert "label 'maybe' is not a label of RTE" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing lost
