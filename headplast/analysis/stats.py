"""Statistics over heads: rank correlations with bootstrap CIs, top-K overlap, layer control,
split-half reliability of importance and disattenuated correlations.

All functions take plain arrays (one value per head) and are deterministic given `seed`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

def _rank_rows(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, axis=-1)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a ** 2).sum(-1) * (b ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / den


def spearman(a, b) -> float:
    return float(_rowwise_pearson(_rank_rows(np.asarray(a, float)), _rank_rows(np.asarray(b, float))))


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_spearman(a, b, idx: np.ndarray) -> np.ndarray:
    """Spearman rho of each bootstrap resample of heads (rows of idx)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return _rowwise_pearson(_rank_rows(a[idx]), _rank_rows(b[idx]))


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    s = samples[np.isfinite(samples)]
    if len(s) == 0:
        return [math.nan, math.nan]
    lo = (1 - level) / 2
    return [float(np.quantile(s, lo)), float(np.quantile(s, 1 - lo))]


def top_k_overlap(a, b, k: int) -> dict:
    """|topK(a) ∩ topK(b)| / K, the overlap expected by chance, and a hypergeometric p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    k = min(k, n)
    ta, tb = set(np.argsort(-a, kind="stable")[:k]), set(np.argsort(-b, kind="stable")[:k])
    hits = len(ta & tb)
    return {"k": k, "overlap": hits / k, "count": hits, "chance": k / n,
            "p_value": float(stats.hypergeom.sf(hits - 1, n, k, k))}


def _layer_residuals(x: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Ranks with each layer's mean rank removed (regression on layer indicators)."""
    r = stats.rankdata(x)
    out = r.copy()
    for l in np.unique(layers):
        m = layers == l
        out[m] = r[m] - r[m].mean()
    return out


def partial_spearman_layer(a, b, layers) -> float:
    """Spearman correlation of a and b controlled for layer (partial correlation of ranks)."""
    a, b, layers = np.asarray(a, float), np.asarray(b, float), np.asarray(layers)
    return float(_rowwise_pearson(_layer_residuals(a, layers), _layer_residuals(b, layers)))


def within_layer_permutation_p(a, b, layers, n_perm: int, seed: int) -> float:
    """Two-sided p-value of the partial rho, permuting b only within each layer."""
    a, b, layers = np.asarray(a, float), np.asarray(b, float), np.asarray(layers)
    ra = _layer_residuals(a, layers)
    obs = abs(_rowwise_pearson(ra, _layer_residuals(b, layers)))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(layers == l) for l in np.unique(layers)]
    perms = np.empty((n_perm, len(b)))
    for i in range(n_perm):
        pb = b.copy()
        for g in groups:
            pb[g] = b[rng.permutation(g)]
        perms[i] = _layer_residuals(pb, layers)
    null = np.abs(_rowwise_pearson(np.broadcast_to(ra, perms.shape), perms))
    return float((1 + np.sum(null >= obs - 1e-12)) / (1 + n_perm))


def split_half_reliability(losses: np.ndarray, n_splits: int = 100, seed: int = 0) -> dict:
    """Reliability of the importance ranking over heads, from per-example losses [N, 1 + n_heads].

    Examples are split at random into halves; importance is computed on each half; the
    Spearman correlation between halves is Spearman-Brown corrected: 2r / (1 + r).
    """
    diff = losses[:, 1:] - losses[:, :1]  # [N, heads]
    N = diff.shape[0]
    if N < 4:
        return {"reliability": math.nan, "half_rho": math.nan, "ci": [math.nan, math.nan], "n_splits": 0}
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        p = rng.permutation(N)
        h1, h2 = diff[p[: N // 2]].mean(0), diff[p[N // 2:]].mean(0)
        rs.append(spearman(h1, h2))
    rs = np.asarray(rs)
    sb = 2 * rs / (1 + rs)
    return {"reliability": float(np.nanmean(sb)), "half_rho": float(np.nanmean(rs)), "ci": percentile_ci(sb),
            "n_splits": n_splits}


def pair_stats(a, b, layers, k: int, n_boot: int, n_perm: int, seed: int) -> dict:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b, layers = a[ok], b[ok], np.asarray(layers)[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"n": int(len(a)), "spearman": math.nan, "note": "constant or too few values"}
    rho, p = stats.spearmanr(a, b)
    tau, tau_p = stats.kendalltau(a, b)
    boots = bootstrap_spearman(a, b, bootstrap_indices(len(a), n_boot, seed))
    return {"n": int(len(a)), "spearman": float(rho), "p_value": float(p), "ci95": percentile_ci(boots),
            "boot_se": float(np.nanstd(boots)), "kendall_tau": float(tau), "kendall_p": float(tau_p),
            "top_k": top_k_overlap(a, b, k),
            "partial_spearman_layer": partial_spearman_layer(a, b, layers),
            "within_layer_perm_p": within_layer_permutation_p(a, b, layers, n_perm, seed)}


def run_stats(table, pairs, per_example: dict | None = None, k: int = 20, n_boot: int = 2000,
              n_perm: int = 1000, seed: int = 0) -> dict:
    """stats.json for one run: each (x, y) of `pairs` present in the table, the split-half
    reliability of every column with per-example values (`per_example`: column -> [N, 1 + heads]),
    and correlations disattenuated by those reliabilities."""
    rel = {name: split_half_reliability(m, seed=seed) for name, m in (per_example or {}).items() if m is not None}
    out = {}
    for x, y in pairs:
        if x not in table or y not in table:
            continue
        s = pair_stats(table[x].to_numpy(), table[y].to_numpy(), table["layer"].to_numpy(), k, n_boot, n_perm,
                       seed)
        den = np.prod([rel[v]["reliability"] for v in (x, y) if v in rel]) if any(v in rel for v in (x, y)) \
            else math.nan
        s["disattenuated"] = float(s["spearman"] / math.sqrt(den)) if np.isfinite(den) and den > 0 and \
            np.isfinite(s["spearman"]) else math.nan
        out[f"{x}~{y}"] = s
    return {"n_heads": int(len(table)), "k": k, "n_boot": n_boot, "n_perm": n_perm, "seed": seed,
            "reliability": rel, "pairs": out}
