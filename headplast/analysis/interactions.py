"""Do the heads' update effects add up? Per layer and for the whole model: the gain from every
head's update at once (headplast.measure.joint) against the sum of the single-head gains
(effect_fwd, headplast.measure.effect), from the per-example losses of both (pure).

Per example x and layer l (H heads):
  joint_x(l)  = loss_x(θ0) − loss_x(θ0 with every head of layer l from θ1)
  single_x(l) = Σ_h [loss_x(θ0) − loss_x(θ0 with head (l, h) from θ1)]
  interaction = mean_x [joint_x(l) − single_x(l)], with a 95% t-interval over examples of the
                paired difference; ratio = mean joint / mean single (1: the effects add up).
The model's row is the same with every layer at once against the sum over every head.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

DEFINITION = ("joint: loss gain from every head's update of the layer (the model) at once; sum_single: sum of the "
              "gains of each head's update alone (effect_fwd); interaction = joint − sum_single (95% t-interval "
              "over eval examples of the paired difference); ratio = joint / sum_single")


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def t_interval(diff: np.ndarray, level: float = 0.95) -> list:
    """The t-interval of the mean of `diff` [N] ([None, None] with fewer than 2 examples)."""
    n = len(diff)
    if n < 2:
        return [None, None]
    half = stats.t.ppf(0.5 + level / 2, n - 1) * diff.std(ddof=1) / math.sqrt(n)
    m = float(diff.mean())
    return [_num(m - half), _num(m + half)]


def _row(scope: str, layer: int | None, joint: np.ndarray, single: np.ndarray) -> dict:
    j, s = float(joint.mean()), float(single.mean())
    diff = joint - single
    return {"scope": scope, "layer": layer, "joint": _num(j), "sum_single": _num(s),
            "interaction": _num(float(diff.mean())), "ci95": t_interval(diff),
            "ratio": _num(j / s) if s != 0 else None}


def interactions(joint_losses: np.ndarray, fwd_values: np.ndarray) -> dict:
    """{'layers': [row per layer], 'model': row, 'n_examples', 'definition'} from the per-example
    losses of update_joint [N, L + 2] (θ0, each layer patched, every layer) and the per-example
    values of effect_fwd [N, 1 + L*H], which are NEGATED losses (θ0, each head patched; a head's
    gain is its column minus column 0). A row: joint, sum_single, interaction, ci95, ratio."""
    J, F = np.asarray(joint_losses, float), np.asarray(fwd_values, float)
    L = J.shape[1] - 2
    if L < 1 or len(J) != len(F) or (F.shape[1] - 1) % L:
        raise ValueError(f"joint losses {J.shape} and single-head values {F.shape} are not of the same "
                         "examples and layers")
    H = (F.shape[1] - 1) // L
    single = (F[:, 1:] - F[:, :1]).reshape(len(F), L, H)  # [N, L, H] gain of each head alone
    joint = J[:, :1] - J[:, 1:]  # [N, L + 1] gain of each layer, then of the model
    return {"layers": [_row("layer", l, joint[:, l], single[:, l].sum(1)) for l in range(L)],
            "model": _row("model", None, joint[:, L], single.sum((1, 2))), "n_examples": len(J),
            "definition": DEFINITION}


def adds_up(row: dict) -> bool | None:
    """Whether the interaction's interval contains 0 (None where it is undefined)."""
    lo, hi = (row or {}).get("ci95") or (None, None)
    if lo is None or hi is None:
        return None
    return lo <= 0 <= hi
