"""Typed [layer, head] results of the measurements, and their per-head jsonl rows."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class HeadTable:
    """Base: every array field is [L, H]; `rows()` gives one dict per head (layer-major)."""

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray) and getattr(self, f.name).ndim == 2
                and f.name not in self._not_per_head()}

    def _not_per_head(self) -> tuple:
        return ()

    def rows(self) -> list[dict]:
        arrs = self.arrays()
        L, H = next(iter(arrs.values())).shape
        return [{"layer": l, "head": h, **{k: float(v[l, h]) for k, v in arrs.items()}}
                for l in range(L) for h in range(H)]


@dataclass(frozen=True)
class ImportanceResult(HeadTable):
    importance: np.ndarray  # [L, H] mean_x loss(ablated) - loss(base)
    importance_se: np.ndarray  # [L, H] standard error of that mean (paired over examples)
    metric_delta: np.ndarray  # [L, H] metric(ablated) - metric(base)
    kl: np.ndarray  # [L, H] mean KL(p_base || p_ablated); NaN for regression
    losses: np.ndarray  # [N, 1 + L*H] per-example loss: column 0 unablated, 1 + l*H + h ablated
    base_loss: float
    base_metric: float
    metric_name: str
    ablation: str

    def _not_per_head(self):
        return ("losses",)


@dataclass(frozen=True)
class GradFisherResult(HeadTable):
    grad_norm: np.ndarray  # [L, H] ||d mean-loss / d head params||
    fisher: np.ndarray  # [L, H] sum over head params of mean_x (d loss_x / d theta)^2
    gate_grad: np.ndarray  # [L, H] mean_x |d loss_x / d g|
    gate_fisher: np.ndarray  # [L, H] mean_x (d loss_x / d g)^2
    taylor: np.ndarray  # [L, H] -mean_x d loss_x / d g


@dataclass(frozen=True)
class UpdateResult(HeadTable):
    U: np.ndarray  # [L, H] Frobenius norm of the head's update (Q/K/V rows, O columns)
    Urel: np.ndarray  # [L, H] U / ||head's theta0 params||
    U_q: np.ndarray
    U_k: np.ndarray
    U_v: np.ndarray
    U_o: np.ndarray
