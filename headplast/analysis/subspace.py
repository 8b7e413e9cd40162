"""How much two updates of the same head share their directions (FFT vs LoRA, or two seeds).

phi = ||U_a^T U_b||_F^2 / k for the top-k left singular vectors U_a, U_b of the head's two
updates (measure.geometry's "all" block: Q, K, V rows and O columns, left vectors in the head's
own 4d coordinates). phi is 1 for the same subspace, 0 for orthogonal ones and k / 4d on average
for random ones. The noise floor is phi between two seeds of the same method: two runs that
differ only in their randomness.
"""

from __future__ import annotations

import numpy as np

from headplast.analysis.stats import bootstrap_indices, bootstrap_spearman, percentile_ci, spearman


def overlap(bases_a: np.ndarray, bases_b: np.ndarray, k: int) -> np.ndarray:
    """[L, H] phi from bases [L, H, 4d, K>=k]; NaN where either head has no update."""
    a, b = bases_a[..., :k], bases_b[..., :k]
    phi = np.einsum("lhik,lhij->lhkj", a, b)  # [L, H, k, k]: U_a^T U_b per head
    phi = (phi ** 2).sum((-1, -2)) / k
    empty = (np.abs(a).sum((-1, -2)) == 0) | (np.abs(b).sum((-1, -2)) == 0)
    return np.where(empty, np.nan, phi)


def _summary(phi: np.ndarray) -> dict:
    v = phi[np.isfinite(phi)]
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "per_layer_mean": [float(np.nanmean(row)) for row in phi]} if v.size else {"mean": None}


def subspace_statistics(phi: np.ndarray, floors: dict[str, np.ndarray], importance: np.ndarray, k: int,
                        dim: int, n_boot: int, seed: int) -> dict:
    """Summary of phi per head, its noise floors (label -> [L, H] phi of two seeds), phi of random
    subspaces (k / dim, dim = 4d) and rho(I_pre, phi) with a bootstrap-over-heads 95% CI."""
    x, y = importance.ravel(), phi.ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    idx = bootstrap_indices(int(ok.sum()), n_boot, seed)
    out = {"k": k, "random_subspaces": k / dim, "phi": _summary(phi),
           "rho_I_pre_phi": {"spearman": spearman(x[ok], y[ok]),
                             "ci95": percentile_ci(bootstrap_spearman(x[ok], y[ok], idx))},
           "noise_floor": {lab: _summary(f) for lab, f in floors.items()}}
    for lab, f in floors.items():  # phi above the floor, paired over heads
        d = (phi - f).ravel()
        d = d[np.isfinite(d)]
        boot = d[bootstrap_indices(len(d), n_boot, seed)].mean(1)
        out["noise_floor"][lab]["phi_minus_floor"] = {"mean": float(d.mean()), "ci95": percentile_ci(boot)}
    return out
