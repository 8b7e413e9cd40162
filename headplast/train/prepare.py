"""The data a run trains and evaluates on, resolved the same way by every step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headplast.data.loaders import Examples, load_split
from headplast.data.tasks import TaskSpec, get_task
from headplast.measure.subset import holdout_indices


@dataclass(frozen=True)
class RunData:
    task: TaskSpec
    train: Examples  # what training (and the probe) use: holdout removed, capped
    validation: Examples
    full_train: Examples
    train_indices: tuple[int, ...]  # into full_train


def prepare_data(task: str, data_dir=None, data_source="auto", eval_source="validation", eval_size=1024,
                 max_train_samples=None, train_subset_seed=0) -> RunData:
    spec = get_task(task)
    full = load_split(spec, "train", data_dir, data_source)
    val = load_split(spec, "validation", data_dir, data_source)
    keep = np.arange(len(full))
    if eval_source == "holdout":  # measured examples must never be trained on
        held = holdout_indices(full, eval_size)
        keep = np.asarray([i for i in keep if i not in held])
    if max_train_samples is not None and max_train_samples < len(keep):
        perm = np.random.default_rng(train_subset_seed).permutation(len(keep))
        keep = np.sort(keep[perm[:max_train_samples]])
    return RunData(spec, full.subset(keep), val, full, tuple(int(i) for i in keep))


def prepare_from_config(cfg) -> RunData:
    return prepare_data(cfg.task, cfg.data_dir, cfg.data_source, cfg.eval_source, cfg.eval_size,
                        cfg.max_train_samples, cfg.train_subset_seed)
