"""Registry of the GLUE tasks: fields, labels (ids as on the hub's nyu-mll/glue) and metric."""

from __future__ import annotations

from dataclasses import dataclass, field

from headplast.errors import HeadplastError, did_you_mean


@dataclass(frozen=True)
class TaskSpec:
    name: str  # canonical name, also the output folder name (e.g. "RTE", "SST-2")
    hub_config: str  # config of nyu-mll/glue
    text_fields: tuple[str, ...]  # hub field names
    label_names: tuple[str, ...]  # index = label id; empty for regression
    metric: str  # primary metric: accuracy | f1 | mcc | pearson
    # GLUE-TSV layout: file names and the column (header name, or index when no header)
    tsv_columns: tuple = ()
    tsv_label: object = "label"
    tsv_header: bool = True
    train_file: str = "train.tsv"
    validation_file: str = "dev.tsv"
    extra_metrics: tuple[str, ...] = field(default=())

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)


_TASKS = [
    TaskSpec("CoLA", "cola", ("sentence",), ("unacceptable", "acceptable"), "mcc",
             tsv_columns=(3,), tsv_label=1, tsv_header=False, extra_metrics=("accuracy",)),
    TaskSpec("SST-2", "sst2", ("sentence",), ("negative", "positive"), "accuracy",
             tsv_columns=("sentence",)),
    TaskSpec("MRPC", "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1",
             tsv_columns=("#1 String", "#2 String"), tsv_label="Quality", extra_metrics=("accuracy",)),
    TaskSpec("STS-B", "stsb", ("sentence1", "sentence2"), (), "pearson",
             tsv_columns=("sentence1", "sentence2"), tsv_label="score", extra_metrics=("spearman",)),
    TaskSpec("QQP", "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "f1",
             tsv_columns=("question1", "question2"), tsv_label="is_duplicate", extra_metrics=("accuracy",)),
    TaskSpec("MNLI", "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             "accuracy", tsv_columns=("sentence1", "sentence2"), tsv_label="gold_label",
             validation_file="dev_matched.tsv"),
    TaskSpec("QNLI", "qnli", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy",
             tsv_columns=("question", "sentence")),
    TaskSpec("RTE", "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy",
             tsv_columns=("sentence1", "sentence2")),
    TaskSpec("WNLI", "wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy",
             tsv_columns=("sentence1", "sentence2")),
]
_BY_KEY = {t.name.replace("-", "").lower(): t for t in _TASKS}

# Tasks whose data ships inside the package, so they run with no network.
BUNDLED_TASKS = ("RTE", "SST-2")
# The default experiment's task (README, "The default experiment"); the guide's scripts use RTE.
DEFAULT_TASK = "SST-2"


def list_tasks() -> list[str]:
    return [t.name for t in _TASKS]


def get_task(name: str) -> TaskSpec:
    """Accepts any case, with or without the dash: 'sst2', 'SST-2', 'rte'."""
    key = str(name).replace("-", "").replace("_", "").lower()
    if key not in _BY_KEY:
        raise HeadplastError(
            f"unknown task '{name}'.{did_you_mean(name, list_tasks())} Supported GLUE tasks: "
            f"{', '.join(list_tasks())}.",
            "pass one of these to --task, or use --train-file/--validation-file for a custom dataset",
        )
    return _BY_KEY[key]


def custom_task(name: str, n_text: int, label_names: tuple[str, ...], metric: str) -> TaskSpec:
    """A task for user files (CSV/TSV/JSONL); label_names empty means regression."""
    fields = ("text_a", "text_b")[:n_text]
    return TaskSpec(name, "", fields, label_names, metric)
