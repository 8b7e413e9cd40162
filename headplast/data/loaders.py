"""Loading task data: a local GLUE folder, the bundled RTE copy, the hub, or custom files.

GLUE TSVs are read with csv.QUOTE_NONE: default quoting silently merges rows that
contain quote characters.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headplast.data.tasks import BUNDLED_TASKS, TaskSpec
from headplast.errors import HeadplastError

BUNDLED_DIR = Path(__file__).parent / "bundled"
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Examples:
    """One split of a task: parallel lists of texts and an array of labels."""

    texts: tuple[tuple[str, ...], ...]  # texts[i] = the example's text fields
    labels: np.ndarray  # int64 class ids, or float32 for regression
    split: str
    source: str  # where the data came from (path or hub id)

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t, y in zip(self.texts, self.labels.tolist()):
            h.update(json.dumps([list(t), y]).encode())
        return h.hexdigest()[:16]

    def subset(self, indices) -> "Examples":
        idx = [int(i) for i in indices]
        return Examples(tuple(self.texts[i] for i in idx), self.labels[idx], self.split, self.source)


@dataclass(frozen=True)
class CustomData:
    """User files with a column mapping (CSV, TSV or JSONL)."""

    train_file: str
    validation_file: str
    text_columns: tuple[str, ...]
    label_column: str = "label"


def read_tsv(path: Path, header: bool = True) -> tuple[list[str] | None, list[list[str]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r]
    if header and not rows:
        raise HeadplastError(f"{path} holds no examples (empty)", "supply the task's GLUE TSV with its data rows")
    return (rows[0], rows[1:]) if header else (None, rows)


def _column(header, spec) -> int:
    if isinstance(spec, int):
        return spec
    if spec not in header:
        raise HeadplastError(f"column '{spec}' not found; the file's header is {header}",
                             "check that the file is the GLUE TSV for this task")
    return header.index(spec)


def _label_id(task: TaskSpec, raw: str, where: str):
    """A label as the task's id; anything else is an error naming the row and the valid labels."""
    try:
        if task.is_regression:
            return float(raw)
        if raw in task.label_names:
            return task.label_names.index(raw)
        if int(raw) in range(task.num_labels):
            return int(raw)
    except ValueError:
        pass
    valid = "a number" if task.is_regression else \
        f"{', '.join(task.label_names)} or their ids 0..{task.num_labels - 1}"
    raise HeadplastError(f"{where}: label '{raw}' is not a label of {task.name} (valid: {valid})",
                         f"fix or remove that row; the file must be {task.name}'s GLUE TSV")


def _check_rows(path: Path, header, rows) -> None:
    if not rows:
        raise HeadplastError(f"{path} holds no examples ({'only a header' if header else 'empty'})",
                             "supply the task's GLUE TSV with its data rows")
    width = len(header) if header else len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise HeadplastError(f"{path}: line {i + 1 + bool(header)} has {len(r)} tab-separated columns, the "
                                 f"{'header' if header else 'first row'} has {width} (a tab inside a text?)",
                                 "remove the stray tab (or the row); the file must be the GLUE TSV, unmodified")


def _load_glue_tsv(task: TaskSpec, path: Path, split: str) -> Examples:
    header, rows = read_tsv(path, task.tsv_header)
    _check_rows(path, header, rows)
    cols = [_column(header, c) for c in task.tsv_columns]
    lab = _column(header, task.tsv_label)
    texts, labels = [], []
    for i, r in enumerate(rows):
        if len(r) <= max(cols + [lab]):
            raise HeadplastError(f"{path}: row {i + 2} has {len(r)} columns, expected more",
                                 "the file must be the tab-separated GLUE file, unmodified")
        texts.append(tuple(r[c] for c in cols))
        labels.append(_label_id(task, r[lab], f"{path} line {i + 1 + bool(header)}"))
    dtype = np.float32 if task.is_regression else np.int64
    return Examples(tuple(texts), np.asarray(labels, dtype=dtype), split, str(path))


def _glue_file(task: TaskSpec, split: str) -> str:
    return task.train_file if split == "train" else task.validation_file


def _hub_split(split: str, task: TaskSpec) -> str:
    if split == "validation" and task.hub_config == "mnli":
        return "validation_matched"
    return split


def _load_hub(task: TaskSpec, split: str) -> Examples:
    try:
        import datasets

        ds = datasets.load_dataset("nyu-mll/glue", task.hub_config, split=_hub_split(split, task))
    except Exception as e:  # network, missing cache, ...
        raise HeadplastError(
            f"could not load {task.name} from the hub (nyu-mll/glue/{task.hub_config}): "
            f"{type(e).__name__}: {str(e)[:200]}",
            f"pass --data-dir DIR with DIR/{task.name}/{_glue_file(task, 'train')} and "
            f"{_glue_file(task, 'validation')} (GLUE's download layout), or connect to the internet",
        ) from e
    texts = tuple(tuple(ex[f] for f in task.text_fields) for ex in ds)
    dtype = np.float32 if task.is_regression else np.int64
    return Examples(texts, np.asarray(ds["label"], dtype=dtype), split, f"hub:nyu-mll/glue/{task.hub_config}")


def _read_table(path: Path) -> list[dict]:
    if not path.exists():
        raise HeadplastError(f"data file {path} does not exist", "check --train-file/--validation-file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    delim = "\t" if suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=delim, quoting=quoting))


def load_custom(custom: CustomData, split: str) -> tuple[Examples, tuple[str, ...]]:
    """Returns the split and its label names (sorted string labels; empty = regression)."""
    path = Path(custom.train_file if split == "train" else custom.validation_file)
    rows = _read_table(path)
    if not rows:
        raise HeadplastError(f"{path} holds no rows", "supply a file with a header and data rows")
    missing = [c for c in (*custom.text_columns, custom.label_column) if c not in rows[0]]
    if missing:
        raise HeadplastError(f"{path}: columns {missing} not found (has {list(rows[0])})",
                             "set --text-columns and --label-column to the file's column names")
    for i, r in enumerate(rows):
        if None in r or None in r.values():  # more or fewer fields than the header
            raise HeadplastError(f"{path}: line {i + 2} has {'more' if None in r else 'fewer'} fields than the "
                                 "header (a stray delimiter?)", "fix or remove that row")
    texts = tuple(tuple(str(r[c]) for c in custom.text_columns) for r in rows)
    raw = [r[custom.label_column] for r in rows]
    names = _custom_label_names(custom)
    if not names:
        return Examples(texts, np.asarray(_floats(raw, path), dtype=np.float32), split, str(path)), names
    unseen = sorted({str(v) for v in raw} - set(names))
    if unseen:
        raise HeadplastError(f"{path}: labels {unseen[:5]} do not occur in the training file "
                             f"{custom.train_file} (its labels: {list(names)[:10]})",
                             "use the same label values in both files")
    return Examples(texts, np.asarray([names.index(str(v)) for v in raw], dtype=np.int64), split, str(path)), names


def _floats(raw, path: Path) -> list[float]:
    try:
        return [float(v) for v in raw]
    except ValueError as e:
        raise HeadplastError(f"{path}: {e} (labels of a regression task must be numbers)",
                             "fix that label; the training file's labels were all numbers") from None


def _custom_label_names(custom: CustomData) -> tuple[str, ...]:
    """Label names from the training file: integers keep their ids, strings are sorted."""
    raw = [str(r[custom.label_column]) for r in _read_table(Path(custom.train_file))]
    uniq = sorted(set(raw))
    if all(_is_int(v) for v in uniq):
        return tuple(str(i) for i in range(max(int(v) for v in uniq) + 1))
    if all(_is_float(v) for v in uniq):
        return ()
    return tuple(uniq)


def _is_int(v: str) -> bool:
    try:
        return float(v) == int(float(v)) and "." not in v
    except ValueError:
        return False


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def load_split(task: TaskSpec, split: str, data_dir: str | None = None, source: str = "auto") -> Examples:
    """Load `split` ('train' or 'validation') of a GLUE task.

    source 'auto' tries, in order: --data-dir, the bundled copy, the hub.
    """
    if split not in SPLITS:
        raise HeadplastError(f"unknown split '{split}'", f"use one of {SPLITS}")
    fname = _glue_file(task, split)
    looked = []
    if source in ("auto", "local") and data_dir:
        path = Path(data_dir) / task.name / fname
        if path.exists():
            return _load_glue_tsv(task, path, split)
        looked.append(str(path))
        if source == "local":
            raise HeadplastError(f"no {split} data for {task.name}: {path} does not exist",
                                 f"put GLUE's {task.name}/{fname} under {data_dir}")
    if source in ("auto", "bundled") and task.name in BUNDLED_TASKS:
        return _load_glue_tsv(task, BUNDLED_DIR / task.name / fname, split)
    looked.append("bundled copies (only " + ", ".join(BUNDLED_TASKS) + ")")
    if source == "bundled":
        raise HeadplastError(f"{task.name} is not bundled", "use --data-dir or the hub")
    if source in ("auto", "hub") and not os.environ.get("HEADPLAST_NO_HUB"):
        try:
            return _load_hub(task, split)
        except HeadplastError as e:
            raise HeadplastError(f"no {split} data for {task.name}; looked in: {'; '.join(looked)}; "
                                 f"then the hub failed: {e.problem}", e.fix) from e
    raise HeadplastError(f"no {split} data for {task.name}; looked in: {'; '.join(looked)}",
                         f"pass --data-dir DIR with DIR/{task.name}/{fname}")
