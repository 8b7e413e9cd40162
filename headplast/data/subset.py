"""The fixed eval subset every measurement of a run uses (seed 999, without replacement)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from headplast.data.loaders import Examples
from headplast.errors import HeadplastError

SUBSET_SEED = 999
EVAL_SOURCES = ("validation", "holdout", "train")


@dataclass(frozen=True)
class EvalSubset:
    task: str
    eval_source: str  # validation | holdout | train
    split: str  # the split the indices point into
    indices: tuple[int, ...]
    size: int
    requested_size: int
    seed: int
    split_fingerprint: str  # of the whole split the subset was drawn from
    fingerprint: str  # of the subset's texts and labels
    seen_in_training: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["indices"] = list(self.indices)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalSubset":
        d = dict(d)
        d["indices"] = tuple(d["indices"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def draw_indices(n: int, size: int, seed: int = SUBSET_SEED) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def split_for(eval_source: str) -> str:
    if eval_source not in EVAL_SOURCES:
        raise HeadplastError(f"unknown --eval-source '{eval_source}'", f"use one of {EVAL_SOURCES}")
    return "validation" if eval_source == "validation" else "train"


def make_eval_subset(task: str, eval_source: str, size: int, split_data: Examples) -> EvalSubset:
    idx = draw_indices(len(split_data), size)
    if len(split_data) < size:
        warnings.warn(f"{task} {split_data.split} has {len(split_data)} examples < --eval-size {size}: "
                      f"using all of them", stacklevel=2)
    sub = split_data.subset(idx)
    return EvalSubset(task, eval_source, split_for(eval_source), tuple(int(i) for i in idx), len(idx),
                      size, SUBSET_SEED, split_data.fingerprint(), sub.fingerprint(),
                      seen_in_training=eval_source == "train")


def holdout_indices(train_data: Examples, eval_size: int) -> set[int]:
    """Training examples reserved for measurement under --eval-source holdout."""
    return set(int(i) for i in draw_indices(len(train_data), eval_size))


def check_same_subset(a: dict, b: dict) -> None:
    keys = ("task", "split", "indices", "split_fingerprint")
    if any(a.get(k) != b.get(k) for k in keys):
        raise HeadplastError(
            "the eval subset differs from the one used before (pre and post must share one)",
            "re-run `headplast measure ... --force` so every measurement uses the same subset")
