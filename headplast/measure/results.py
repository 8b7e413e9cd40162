"""Typed [layer, head] results of the measurements, and their per-head jsonl rows.

Every field annotated `np.ndarray` is one value per head ([L, H]) unless its metadata says
`per_head=False`; these fields are exactly the columns of the measurement's file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from headplast.store.schema import (AMPLIFICATION_FILE, CIRCUIT_BASES_FILE, CIRCUIT_SUBSPACES_FILE, FUNC_HALVES_FILE,
                                    JOINT_EFFECT_FILE, JOINT_EXAMPLES_FILE, JOINT_LOSSES_FILE)


def not_per_head(default=None):
    return field(default=default, metadata={"per_head": False})


@dataclass(frozen=True)
class HeadTable:
    """Base: `head_fields()` are the [L, H] arrays; `rows()` gives one dict per head (layer-major)."""

    @classmethod
    def head_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls)
                     if f.type in ("np.ndarray", np.ndarray) and f.metadata.get("per_head", True))

    def row_extras(self) -> dict:
        """Constant values written on every row (e.g. the ablation kind)."""
        return {}

    def per_example(self) -> np.ndarray | dict | None:
        """Per-example values [N, 1 + L*H] (value of head c = column 1 + c minus column 0), where a
        measurement has them: one array (of its first field), or {field: array}."""
        return None

    def extra_files(self) -> dict:
        """{file name: .npy array or list of jsonl rows} of the declaration's `extra_files`."""
        return {}

    def rows(self) -> list[dict]:
        arrs = {k: getattr(self, k) for k in self.head_fields()}
        L, H = next(iter(arrs.values())).shape
        extra = self.row_extras()
        return [{"layer": l, "head": h, **{k: float(v[l, h]) for k, v in arrs.items()}, **extra}
                for l in range(L) for h in range(H)]


@dataclass(frozen=True)
class ImportanceResult(HeadTable):
    importance: np.ndarray  # [L, H] mean_x loss(ablated) - loss(base)
    importance_se: np.ndarray  # [L, H] standard error of that mean (paired over examples)
    metric_delta: np.ndarray  # [L, H] metric(ablated) - metric(base)
    kl: np.ndarray  # [L, H] mean KL(p_base || p_ablated); NaN for regression
    losses: np.ndarray = not_per_head()  # [N, 1 + L*H] per-example loss: col 0 unablated, 1 + l*H + h ablated
    base_loss: float = 0.0
    base_metric: float = 0.0
    metric_name: str = ""
    ablation: str = "zero"

    def row_extras(self) -> dict:
        return {"ablation": self.ablation}

    def per_example(self) -> np.ndarray:
        return self.losses


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
    W0: np.ndarray  # [L, H] ||head's theta0 params|| (Urel's denominator; a covariate of the statistics)


@dataclass(frozen=True)
class UpdateEffectResult(HeadTable):
    effect_fwd: np.ndarray  # [L, H] mean_x loss(theta0) - loss(theta0 + head's update)
    effect_fwd_se: np.ndarray
    effect_rev: np.ndarray  # [L, H] mean_x loss(theta1 - head's update) - loss(theta1)
    effect_rev_se: np.ndarray
    fwd_values: np.ndarray = not_per_head()  # [N, 1 + L*H]: -losses of theta0, then of each patched theta0
    rev_values: np.ndarray = not_per_head()  # [N, 1 + L*H]: losses of theta1, then of each reverted theta1

    def per_example(self) -> dict:
        return {"effect_fwd": self.fwd_values, "effect_rev": self.rev_values}


@dataclass(frozen=True)
class GroupEffectResult(HeadTable):
    group_effect_fwd: np.ndarray  # [L, H] the update effect of the head's K/V group as a whole (the same per group)
    group_effect_fwd_se: np.ndarray
    group_effect_rev: np.ndarray  # [L, H] its reverse: loss when the whole group is reverted to theta0
    group_effect_rev_se: np.ndarray


@dataclass(frozen=True)
class GroupImportanceResult(HeadTable):
    group_I_pre: np.ndarray  # [L, H] importance of the head's K/V group at theta0: its G heads removed at once
    group_I_pre_se: np.ndarray  # (the same for each head of a group)
    group_I_post: np.ndarray  # [L, H] the same at theta1
    group_I_post_se: np.ndarray


@dataclass(frozen=True)
class CircuitResult(HeadTable):
    qk_rel: np.ndarray  # [L, H] ||ΔQK||_F / ||QK(theta0)||_F (headplast.measure.circuit)
    ov_rel: np.ndarray  # [L, H] ||ΔOV||_F / ||OV(theta0)||_F
    qk_srank: np.ndarray  # [L, H] stable rank of ΔQK (NaN where QK did not change)
    ov_srank: np.ndarray  # [L, H] stable rank of ΔOV
    amplification: list = not_per_head()  # one row per adapted matrix (layer x Q/K/V/O): amplification.jsonl
    bases: np.ndarray = not_per_head()  # [4 sides, L, H, D+1, K] float32: top singular vectors of ΔQK / ΔOV
    subspaces: list = not_per_head()  # one row per head and side: energies inside θ0's span

    def extra_files(self) -> dict:
        return {AMPLIFICATION_FILE: self.amplification, CIRCUIT_BASES_FILE: self.bases,
                CIRCUIT_SUBSPACES_FILE: self.subspaces}


@dataclass(frozen=True)
class JointResult(HeadTable):
    layer_joint_fwd: np.ndarray  # [L, H] mean_x loss(theta0) - loss(theta0 + every update of the head's layer)
    losses: np.ndarray = not_per_head()  # [N, L + 2]: theta0, each layer's heads patched, every layer's
    layers: list = not_per_head()  # one row per layer and one for the model: joint_effect.jsonl
    examples: np.ndarray = not_per_head()  # [N] indices into the eval subset of the losses' rows

    def extra_files(self) -> dict:
        return {JOINT_LOSSES_FILE: self.losses, JOINT_EFFECT_FILE: self.layers, JOINT_EXAMPLES_FILE: self.examples}


@dataclass(frozen=True)
class FuncChangeResult(HeadTable):
    func_change: np.ndarray  # [L, H] 1 - linear CKA of the head's output under theta0 and theta1
    attn_jsd: np.ndarray  # [L, H] mean JSD of its attention pattern under theta0 and theta1 (nats)
    halves: np.ndarray = not_per_head()  # [2, splits, 2, L*H] both on random halves (reliability)

    def extra_files(self) -> dict:
        return {FUNC_HALVES_FILE: self.halves}
