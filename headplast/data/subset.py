"""The fixed eval subset every measurement of a run uses (seed 999, without replacement)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from headplast.data.loaders import Examples
from headplast.data.overlap import RULE, TrainingText, overlap_report
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
    seen_in_training: bool  # trained on (eval source 'train'), or overlapping training text (measured)
    overlap: dict | None = None  # overlap with the training examples (data.overlap.overlap_report)
    holdout_rule: str | None = None  # how a holdout was kept apart from training (None: drawn at random)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["indices"] = list(self.indices)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalSubset":
        d = dict(d)
        d["indices"] = tuple(d["indices"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})  # older files lack the newer fields


def draw_indices(n: int, size: int, seed: int = SUBSET_SEED) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def split_for(eval_source: str) -> str:
    if eval_source not in EVAL_SOURCES:
        raise HeadplastError(f"unknown --eval-source '{eval_source}'", f"use one of {EVAL_SOURCES}")
    return "validation" if eval_source == "validation" else "train"


def make_eval_subset(task: str, eval_source: str, size: int, split_data: Examples, train: Examples | None = None,
                     train_indices=()) -> EvalSubset:
    """The eval subset of `split_data`. With the training examples (`train`, at `train_indices` of
    the train split): a holdout kept apart from them by source text (disjoint_holdout), and the
    overlap of the subset with them measured and recorded."""
    training = TrainingText(train) if train is not None else None
    rule = None
    if eval_source == "holdout" and training is not None:
        idx, rule = disjoint_holdout(split_data, train_indices, size, training), HOLDOUT_RULE
    else:
        idx = draw_indices(len(split_data), size)
    if len(idx) < size:
        warnings.warn(f"{task} {split_data.split} has {len(idx)} usable examples < --eval-size {size}: "
                      f"using all of them", stacklevel=2)
    sub = split_data.subset(idx)
    overlap = overlap_report(sub, training, len(train)) if training is not None else None
    seen = eval_source == "train" or bool(overlap and overlap["any"])
    return EvalSubset(task, eval_source, split_for(eval_source), tuple(int(i) for i in idx), len(idx),
                      size, SUBSET_SEED, split_data.fingerprint(), sub.fingerprint(), seen_in_training=seen,
                      overlap=overlap, holdout_rule=rule)


HOLDOUT_RULE = f"source-disjoint: no example {RULE}"


def disjoint_holdout(full: Examples, train_indices, size: int, training: TrainingText) -> np.ndarray:
    """`size` examples of the train split, none trained on and none overlapping a training example
    (data.overlap): the examples training left out (holdout_indices) that pass, then others never
    trained on, in a seeded random order, until there are `size`. Sorted indices."""
    first = draw_indices(len(full), size)
    keep = apart_from_training(full, first, size, training)
    if len(keep) < size:
        never = np.setdiff1d(np.arange(len(full)), np.union1d(first, np.asarray(train_indices, dtype=int)))
        keep += apart_from_training(full, np.random.default_rng(SUBSET_SEED + 1).permutation(never), size - len(keep),
                                    training)
    return np.sort(np.asarray(keep, dtype=int))


def apart_from_training(examples: Examples, order, n: int, training: TrainingText) -> list[int]:
    """The first n indices of `order` whose example overlaps no training example (data.overlap)."""
    out: list[int] = []
    for i in order:
        if len(out) == n:
            break
        if not training.overlaps(examples.texts[i]):
            out.append(int(i))
    return out


def holdout_indices(train_data: Examples, eval_size: int) -> set[int]:
    """Training examples kept out of training under --eval-source holdout (the holdout is drawn
    from these first, then topped up: disjoint_holdout)."""
    return set(int(i) for i in draw_indices(len(train_data), eval_size))


def check_same_subset(a: dict, b: dict) -> None:
    if a.get("eval_source") == "holdout" and a.get("holdout_rule") != b.get("holdout_rule"):
        return  # a holdout drawn by an older rule is replaced: every measurement's key holds the subset
    keys = ("task", "split", "indices", "split_fingerprint")
    if any(a.get(k) != b.get(k) for k in keys):
        raise HeadplastError(
            "the eval subset differs from the one used before (pre and post must share one)",
            "re-run `headplast measure ... --force` so every measurement uses the same subset")
