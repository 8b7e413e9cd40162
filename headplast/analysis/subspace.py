"""How much two updates of the same head share their directions (FFT vs LoRA, or two seeds).

phi = ||U_a^T U_b||_F^2 / min(k_a, k_b) for the top-k left singular vectors U_a, U_b of the head's
two updates (measure.geometry's "all" block: Q, K, V rows and O columns, left vectors in the head's
own 4d coordinates). k_a = min(k, rank_a): a basis keeps only the vectors whose singular value is
above measure.geometry's relative threshold (the stored basis has zero columns for the rest), so a
rank-4 update against itself has phi = 1 at k = 8, not 4/8 plus whatever numerical-noise vectors
happen to share. phi is 1 when the smaller subspace lies in the larger, 0 for orthogonal ones.
(Bases measured before the threshold existed keep their noise vectors: re-measure for the rank.)

Chance level. Random subspaces of the whole 4d space give phi = max(k_a, k_b) / 4d on average
("random_subspaces", k / 4d), but that is too weak a baseline: Q, K, V and O are concatenated
unnormalised, so when both updates put their energy in the same part, their top directions lie
in the same d coordinates and overlap by up to k / d by chance alone. The null kept here
("random_within_parts") keeps each subspace's energy in each part and randomises its directions
within the part (an independent Haar rotation of each part's d coordinates):

    E[phi] = sum_p e_a,p e_b,p / (d min(k_a, k_b)),   e_x,p = ||U_x[rows of part p]||_F^2

(the cross terms vanish: E[R] = 0; E||A^T R B||^2 = ||A||^2 ||B||^2 / d for Haar R). It equals
k / 4d when every part holds a quarter, and k / d when both subspaces sit in one part. phi is
reported against it head by head (phi minus the null, paired over heads; intervals resample layers).

The same holds for parts of unequal dimensions d_p (each E||A_pᵀ R B_p||² = ||A_p||² ||B_p||² / d_p):
`energy_null`. The circuit maps' subspaces (measure.circuit: ΔQK's query and key sides, ΔOV's
output and input sides, in residual-stream coordinates) use two parts: S, the d directions the head
reads or writes at θ0 on that side, and its complement (D or D + 1 − d): `circuit_null`.

The noise floor is phi between two seeds of the same method: two runs that differ only in their
randomness.
"""

from __future__ import annotations

import numpy as np

from headplast.analysis.stats import layer_bootstrap_spearman, layer_resamples, percentile_ci, spearman


PARTS = 4  # Q, K, V, O: the rows of a head's basis are 4 blocks of d (measure.geometry.head_blocks)


def ranks(bases: np.ndarray, k: int) -> np.ndarray:
    """[L, H] number of the first k basis vectors kept (non-zero columns)."""
    return (np.abs(bases[..., :k]).sum(-2) > 0).sum(-1)


def _pair(bases_a, bases_b, k):
    a, b = bases_a[..., :k], bases_b[..., :k]
    n = np.minimum(ranks(a, k), ranks(b, k)).astype(float)
    return a, b, np.where(n > 0, n, np.nan)  # NaN where either head has no update


def overlap(bases_a: np.ndarray, bases_b: np.ndarray, k: int) -> np.ndarray:
    """[L, H] phi = ||U_a^T U_b||_F^2 / min(k, rank_a, rank_b) from bases [L, H, 4d, K>=k] (zero
    columns beyond a head's rank); NaN where either head has no update."""
    a, b, n = _pair(bases_a, bases_b, k)
    phi = np.einsum("lhik,lhij->lhkj", a, b)  # [L, H, k, k]: U_a^T U_b per head
    return (phi ** 2).sum((-1, -2)) / n


def part_energies(bases: np.ndarray, k: int) -> np.ndarray:
    """[L, H, 4]: the energy ||U[rows of part p]||_F^2 of the top-k subspace in Q, K, V, O (sums to its rank)."""
    u = bases[..., :k]
    L, H, dim, kk = u.shape
    return (u.reshape(L, H, PARTS, dim // PARTS, kk) ** 2).sum((-1, -2))


def energy_null(e_a: np.ndarray, e_b: np.ndarray, dims: np.ndarray, n: np.ndarray) -> np.ndarray:
    """[L, H] mean phi of two subspaces with energies e [L, H, P] in P orthogonal parts of dimensions
    dims ([P] or [L, H, P]) whose directions within each part are random: sum_p e_a,p e_b,p / (d_p n),
    n = min(k_a, k_b)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(dims > 0, e_a * e_b / np.maximum(dims, 1), 0.0)
    return terms.sum(-1) / n


def random_within_parts(bases_a: np.ndarray, bases_b: np.ndarray, k: int) -> np.ndarray:
    """[L, H] mean phi if each subspace kept its energy in each of Q, K, V, O but its directions
    within each part were random: sum_p e_a,p e_b,p / (d min(k_a, k_b)) (see the module docstring)."""
    _, _, n = _pair(bases_a, bases_b, k)
    d = bases_a.shape[2] // PARTS
    return energy_null(part_energies(bases_a, k), part_energies(bases_b, k), np.full(PARTS, d), n)


def circuit_null(bases_a: np.ndarray, bases_b: np.ndarray, span_a: np.ndarray, span_b: np.ndarray,
                 span_dim: np.ndarray, dim: int, k: int) -> np.ndarray:
    """[L, H] mean phi of one side of two circuit updates (bases [L, H, dim', K]) if each kept its
    energy inside S and outside it (span [L, H, K]: each basis vector's energy inside S, of dimension
    span_dim [L, H]; the side has dim coordinates) and its directions within each were random."""
    _, _, n = _pair(bases_a, bases_b, k)
    e = lambda bases, span: np.stack([span[..., :k].sum(-1), ranks(bases, k) - span[..., :k].sum(-1)], -1)  # noqa: E731
    return energy_null(e(bases_a, span_a), e(bases_b, span_b), np.stack([span_dim, dim - span_dim], -1), n)


def _summary(phi: np.ndarray) -> dict:
    v = phi[np.isfinite(phi)]
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "per_layer_mean": [float(np.nanmean(row)) for row in phi]} if v.size else {"mean": None}


def _above(phi, base, n_boot, seed) -> dict:
    """phi minus a per-head baseline [L, H], paired over heads: mean over the heads and a 95% CI
    from a layer-block bootstrap (the heads of a layer are not independent: under LoRA every head's
    ΔW_Q of a layer shares the adapter's r input directions). Heads with no phi are left out."""
    d = np.asarray(phi - base, float)
    ok = np.isfinite(d)
    if not ok.any():
        return {"mean": None, "ci95": [None, None]}
    layers = np.broadcast_to(np.arange(d.shape[0])[:, None], d.shape)[ok]
    boot = np.concatenate([d[ok][idx].mean(1) for idx, _ in layer_resamples(layers, n_boot, seed)])
    return {"mean": float(d[ok].mean()), "ci95": percentile_ci(boot), "resampled": "layers"}


def subspace_statistics(phi: np.ndarray, floors: dict[str, np.ndarray], importance: np.ndarray, k: int,
                        dim: int, n_boot: int, seed: int, null: np.ndarray | None = None) -> dict:
    """Summary of phi per head, its noise floors (label -> [L, H] phi of two seeds), phi of random
    subspaces (k / dim, dim = 4d; kept for old readers, too weak a baseline), the null that keeps
    each part's energy (`null`, [L, H] from random_within_parts: its summary and phi minus it,
    paired over heads) and rho(I_pre, phi), each with a layer-block bootstrap 95% CI."""
    x, y = importance.ravel(), phi.ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    layers = np.repeat(np.arange(phi.shape[0]), phi.shape[1])[ok]
    across, _ = layer_bootstrap_spearman(x[ok], y[ok], layer_resamples(layers, n_boot, seed))
    out = {"k": k, "random_subspaces": k / dim, "phi": _summary(phi),
           "rho_I_pre_phi": {"spearman": spearman(x[ok], y[ok]), "ci95": percentile_ci(across[np.isfinite(across)]),
                             "resampled": "layers"},
           "noise_floor": {lab: _summary(f) for lab, f in floors.items()}}
    if null is not None:
        out["random_within_parts"] = {**_summary(null), "phi_minus_null": _above(phi, null, n_boot, seed),
                                      "what": "mean phi if each subspace kept its energy in each of Q, K, V, O "
                                              "and its directions within each part were random"}
    for lab, f in floors.items():  # phi above the floor, paired over heads
        out["noise_floor"][lab]["phi_minus_floor"] = _above(phi, f, n_boot, seed)
    return out
