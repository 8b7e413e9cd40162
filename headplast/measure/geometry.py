"""The shape of each head's update and intruder dimensions of each adapted matrix.

Per head (`update_geometry.jsonl`): for the head's rows of ΔW_Q, ΔW_K, ΔW_V, its columns of
ΔW_O (transposed to [d, D]), and their concatenation [4d, D] ("all", whose Frobenius norm is U),
the Frobenius norm, the stable rank ||M||_F² / ||M||_2², the effective rank r90 (smallest k with
s_1² + ... + s_k² >= 0.9 Σ s_i²) and the top singular value's share of the energy s_1² / Σ s_i².
The concatenation keeps the residual-stream axis (D) as columns, so its left singular vectors live
in the head's own 4d coordinates; their top BASES_K are kept (`update_bases.npy`) for the FFT vs
LoRA subspace overlap of `headplast compare`, but only those whose singular value is above
rank_tolerance (relative to the largest): the others span numerical noise (a rank-r update's
vectors r+1, ... have s ~ 1e-14 in float64, or the float32 rounding of the weights), and are
stored as zero columns, so the basis of a rank-r update has r columns.

Per weight matrix (`intruders.jsonl`), after Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning:
An Illusion of Equivalence" (arXiv:2410.21228): of the top-k left singular vectors of W0 + ΔW, the
intruder dimensions are those whose largest |cosine| with any left singular vector of W0 is below
epsilon (--intruder-k 10, --intruder-epsilon 0.5).
"""

from __future__ import annotations

from dataclasses import make_dataclass

import numpy as np
import torch

from headplast.arch.adapters import KINDS, ArchAdapter, get_adapter
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.results import HeadTable, not_per_head
from headplast.measure.update import qkvo_weights
from headplast.store import schema

PARTS = schema.GEOMETRY_PARTS
STATS = schema.GEOMETRY_STATS
BASES_K = 16  # left singular vectors kept per head for subspace overlaps (compare's --subspace-k <= this)
BASES_FILE, INTRUDERS_FILE = schema.BASES_FILE, schema.INTRUDERS_FILE
field_name = schema.geometry_field


def _extra_files(self) -> dict:
    return {BASES_FILE: self.bases, INTRUDERS_FILE: self.intruders}


# [L, H] fields fro_q, srank_q, ..., fro, srank, r90, top_share (the last four for "all"); then
# bases [L, H, 4d, BASES_K] (top left singular vectors of "all") and the intruder rows
GeometryResult = make_dataclass(
    "GeometryResult", [(field_name(s, p), np.ndarray) for p in PARTS for s in STATS]
    + [("bases", np.ndarray, not_per_head()), ("intruders", list, not_per_head())],
    bases=(HeadTable,), frozen=True, namespace={"extra_files": _extra_files})
GeometryResult.__module__ = __name__


def spectrum_stats(s: np.ndarray) -> dict[str, float]:
    """Frobenius norm, stable rank, r90 and top share from singular values (NaN for a zero matrix)."""
    e = s.astype(np.float64) ** 2
    total = e.sum()
    if total <= 0:
        return {"fro": 0.0, "srank": np.nan, "r90": np.nan, "top_share": np.nan}
    r90 = int(np.searchsorted(np.cumsum(e), 0.9 * total * (1 - 1e-12)) + 1)
    return {"fro": float(np.sqrt(total)), "srank": float(total / e[0]), "r90": float(r90),
            "top_share": float(e[0] / total)}


def rank_tolerance(shape: tuple[int, int]) -> float:
    """Relative threshold on s_i / s_1 for a basis vector to count: max(m, n) x float32's epsilon
    (the weights are float32; numpy.linalg.matrix_rank's rule at float32 precision)."""
    return max(shape) * float(np.finfo(np.float32).eps)


def kept_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """How many singular values s (descending) of a matrix of `shape` are above rank_tolerance x s_1."""
    return int((s > rank_tolerance(tuple(shape)) * s[0]).sum()) if len(s) and s[0] > 0 else 0


def top_basis(m: torch.Tensor, n: int = BASES_K) -> tuple[np.ndarray, torch.Tensor]:
    """([rows, n], singular values): the top-n left singular vectors of m, zero columns beyond its
    rank (s_i <= rank_tolerance x s_1)."""
    out = np.zeros((m.shape[0], n))
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    r = min(n, kept_rank(s, m.shape))
    out[:, :r] = u[:, :r].numpy()
    return out, s


def head_blocks(dw: dict, adapter: ArchAdapter, config, layer: int, head: int) -> dict[str, torch.Tensor]:
    """The head's update per part, each [d, D]; "all" stacks them [4d, D]. Under grouped-query
    attention K/V are the group's rows times sqrt(1/group size) (adapter.head_share), so that
    ||all||_F = U. The scale changes no statistic of a single part; those of "all" (its spectrum,
    hence srank, r90, top_share and the bases compared FFT vs LoRA) weigh K/V by it."""
    blocks = {k: adapter.head_weight(dw[(layer, k)], config, k, head) * adapter.head_share(config, k) ** 0.5
              for k in KINDS}
    blocks["o"] = blocks["o"].T  # O's columns: [D, d] -> [d, D], so every part has D columns
    blocks["all"] = torch.cat([blocks[k] for k in KINDS])
    return blocks


def update_geometry(w0: dict, w1: dict, adapter: ArchAdapter, config, k: int = 10, epsilon: float = 0.5):
    L, H = adapter.num_layers(config), adapter.num_heads(config)
    out = {field_name(s, p): np.zeros((L, H)) for p in PARTS for s in STATS}
    dw = {key: (w1[key] - w0[key]).double() for key in w0}
    bases = np.zeros((L, H, 4 * adapter.head_dim(config), BASES_K))
    for l in range(L):
        for h in range(H):
            for part, m in head_blocks(dw, adapter, config, l, h).items():
                if part == "all":
                    bases[l, h], s = top_basis(m)  # a zero update has no basis
                else:
                    s = torch.linalg.svdvals(m)
                for stat, v in spectrum_stats(s.numpy()).items():
                    out[field_name(stat, part)][l, h] = v
    return GeometryResult(**out, bases=bases, intruders=intruder_rows(w0, w1, adapter, k, epsilon))


def intruder_rows(w0: dict, w1: dict, adapter: ArchAdapter, k: int, epsilon: float) -> list[dict]:
    rows = []
    for (l, kind) in sorted(w0, key=lambda x: (x[0], KINDS.index(x[1]))):
        if torch.equal(w0[(l, kind)], w1[(l, kind)]):  # not adapted: its singular vectors are W0's
            cos = np.ones(k)
        else:
            cos = max_cosines(w0[(l, kind)], w1[(l, kind)], k)
        rows.append({"layer": l, "module": kind, "name": adapter.module_name(l, kind), "k": k, "epsilon": epsilon,
                     "intruders": int((cos < epsilon).sum()), "max_cos": [round(float(c), 6) for c in cos]})
    return rows


def max_cosines(w0: torch.Tensor, w1: torch.Tensor, k: int) -> np.ndarray:
    """For each of the top-k left singular vectors of w1: its largest |cosine| with W0's left singular vectors."""
    u0 = torch.linalg.svd(w0.double(), full_matrices=False)[0]
    u1 = torch.linalg.svd(w1.double(), full_matrices=False)[0][:, :k]
    return (u1.T @ u0).abs().max(dim=1).values.numpy()


def _compute(x: Inputs):
    m0, m1 = x.model("theta0", exact=True), x.model("theta1", exact=True)
    ad = get_adapter(m0)
    return update_geometry(qkvo_weights(m0, ad), qkvo_weights(m1, ad), ad, m0.config, x.cfg.intruder_k,
                           x.cfg.intruder_epsilon)


UPDATE_GEOMETRY = Measurement.of(schema.UPDATE_GEOMETRY, GeometryResult, _compute)

