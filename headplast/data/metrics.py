"""GLUE metrics (accuracy, F1, MCC, Pearson/Spearman) and the majority-class baseline."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from headplast.data.tasks import TaskSpec


def predictions(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task.is_regression else logits.argmax(-1)


def metric_value(name: str, preds: np.ndarray, labels: np.ndarray) -> float:
    if name == "accuracy":
        return float((preds == labels).mean())
    if name == "f1":
        return float(f1_score(labels, preds, zero_division=0))
    if name == "mcc":
        return float(matthews_corrcoef(labels, preds)) if len(np.unique(preds)) > 1 else 0.0
    if name in ("pearson", "spearman"):
        if np.std(preds) == 0:
            return 0.0
        fn = stats.pearsonr if name == "pearson" else stats.spearmanr
        return float(fn(preds, labels)[0])
    raise ValueError(f"unknown metric {name}")


def compute_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict:
    """All of the task's metrics; 'metric' holds the primary one."""
    preds = predictions(task, logits)
    out = {"metric_name": task.metric, "metric": metric_value(task.metric, preds, labels)}
    for m in (task.metric, *task.extra_metrics):
        out[m] = metric_value(m, preds, labels)
    return out


def majority_baseline(task: TaskSpec, train_labels: np.ndarray, val_labels: np.ndarray) -> float:
    """The primary metric of always predicting the training majority (the mean for regression)."""
    if task.is_regression:
        return 0.0  # a constant has no correlation with the labels
    majority = np.bincount(train_labels.astype(int)).argmax()
    return metric_value(task.metric, np.full_like(val_labels, majority), val_labels)
