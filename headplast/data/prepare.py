"""The data a run trains and evaluates on, resolved the same way by every step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headplast.data.loaders import CustomData, Examples, load_custom, load_split
from headplast.data.tasks import TaskSpec, custom_task, get_task
from headplast.data.subset import holdout_indices


@dataclass(frozen=True)
class RunData:
    task: TaskSpec
    train: Examples  # what training (and the probe) use: holdout removed, capped
    validation: Examples
    full_train: Examples
    train_indices: tuple[int, ...]  # into full_train


def _load(task: str, data_dir, data_source, custom: CustomData | None):
    if custom is None:
        spec = get_task(task)
        return spec, load_split(spec, "train", data_dir, data_source), load_split(spec, "validation", data_dir,
                                                                                   data_source)
    full, names = load_custom(custom, "train")
    val, _ = load_custom(custom, "validation")
    metric = "pearson" if not names else "accuracy"
    return custom_task(task, len(custom.text_columns), names, metric), full, val


def prepare_data(task: str, data_dir=None, data_source="auto", eval_source="validation", eval_size=1024,
                 max_train_samples=None, train_subset_seed=0, custom: CustomData | None = None) -> RunData:
    spec, full, val = _load(task, data_dir, data_source, custom)
    keep = np.arange(len(full))
    if eval_source == "holdout":  # measured examples must never be trained on
        held = holdout_indices(full, eval_size)
        keep = np.asarray([i for i in keep if i not in held])
    if max_train_samples is not None and max_train_samples < len(keep):
        perm = np.random.default_rng(train_subset_seed).permutation(len(keep))
        keep = np.sort(keep[perm[:max_train_samples]])
    return RunData(spec, full.subset(keep), val, full, tuple(int(i) for i in keep))


def custom_from(cfg: dict) -> CustomData | None:
    if not cfg.get("train_file"):
        return None
    return CustomData(cfg["train_file"], cfg["validation_file"], tuple(cfg["text_columns"]), cfg["label_column"])


def prepare_from_config(cfg) -> RunData:
    """cfg: a TrainConfig or the 'config' dict recorded in run_config.json."""
    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return prepare_data(c["task"], c["data_dir"], c["data_source"], c["eval_source"], c["eval_size"],
                        c["max_train_samples"], c["train_subset_seed"], custom_from(c))


def task_name(task: str, custom: bool) -> str:
    """Folder name of a task: the canonical GLUE name, or the user's name for custom data."""
    return task if custom else get_task(task).name
