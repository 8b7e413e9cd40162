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


def membership(x, k: int, largest: bool = True) -> np.ndarray:
    """[n] in [0, 1]: each value's share of the k largest (or smallest) of x. 1 inside, 0 outside;
    a tie group straddling the boundary shares the places left (k - the ones inside) equally: each
    member's chance of being chosen when ties are broken at random, so a set never depends on head
    order. NaN is never chosen. Shares sum to min(k, finite values)."""
    v = np.asarray(x, float)
    v = -v if largest else v
    finite = np.isfinite(v)
    out = np.zeros(len(v))
    k = min(int(k), int(finite.sum()))
    if k <= 0:
        return out
    cut = np.sort(v[finite])[k - 1]
    inside, tied = finite & (v < cut), finite & (v == cut)
    out[inside] = 1.0
    out[tied] = (k - inside.sum()) / tied.sum()
    return out


def share_count(shares: np.ndarray) -> float | int:
    """A sum of shares as a count: an int when whole (no ties were split), else rounded to 1e-9."""
    c = float(shares.sum())
    return int(round(c)) if abs(c - round(c)) < 1e-9 else round(c, 9)


def top_k_overlap(a, b, k: int) -> dict:
    """|topK(a) ∩ topK(b)| / K, the overlap expected by chance, and a hypergeometric p-value.
    Ties at either top K's boundary count by their shares (membership): the overlap expected when
    ties are broken at random; the p-value is then that of the whole heads it surely holds."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    k = min(k, n)
    if n == 0 or np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant score has no top K
        return {"k": k, "overlap": math.nan, "count": math.nan, "chance": k / n if n else math.nan,
                "p_value": math.nan}
    hits = share_count(membership(a, k) * membership(b, k))
    return {"k": k, "overlap": hits / k, "count": hits, "chance": k / n,
            "p_value": float(stats.hypergeom.sf(math.floor(hits) - 1, n, k, k))}


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


def fisher_z_mean(r) -> float:
    """Mean of correlations on Fisher's z scale (atanh), transformed back: stays in [-1, 1]."""
    r = np.asarray(r, float)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return math.nan
    if np.ptp(r) == 0:  # all equal (also +-1, where atanh is infinite)
        return float(r[0])
    return float(np.tanh(np.mean(np.arctanh(np.clip(r, -0.999999, 0.999999)))))


def spearman_brown(r: float) -> float:
    """Reliability of the whole from the correlation r of two halves: 2r / (1 + r).

    Defined for r >= 0; a negative half correlation (no reliability) is returned uncorrected,
    where the formula would run off to minus infinity."""
    return float(2 * r / (1 + r)) if r >= 0 else float(r)


def split_half_reliability(losses: np.ndarray, n_splits: int = 100, seed: int = 0) -> dict:
    """Reliability of the importance ranking over heads, from per-example losses [N, 1 + n_heads].

    Examples are split at random into halves and importance is computed on each half. The
    Spearman correlations between halves are averaged on Fisher's z scale and the mean is
    Spearman-Brown corrected once, so the result stays in [-1, 1]. 'range95' is where 95% of
    the single splits fall (each corrected the same way).
    """
    diff = losses[:, 1:] - losses[:, :1]  # [N, heads]
    N = diff.shape[0]
    if N < 4:
        return {"reliability": math.nan, "half_rho": math.nan, "range95": [math.nan, math.nan], "n_splits": 0,
                "note": "fewer than 4 examples"}
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        p = rng.permutation(N)
        h1, h2 = diff[p[: N // 2]].mean(0), diff[p[N // 2:]].mean(0)
        rs.append(spearman(h1, h2))
    rs = np.asarray(rs)
    half = fisher_z_mean(rs)
    lo, hi = percentile_ci(rs)
    return {"reliability": spearman_brown(half) if np.isfinite(half) else math.nan, "half_rho": half,
            "range95": [spearman_brown(lo), spearman_brown(hi)] if np.isfinite(lo) else [math.nan, math.nan],
            "n_splits": n_splits}


def disattenuated(rho: float, reliabilities: dict) -> dict:
    """rho / sqrt(product of the reliabilities), where that is defined and meaningful.

    Defined only when every reliability involved is > 0. A value beyond [-1, 1] (errors that
    correlate, e.g. I_pre and I_post measured on the same examples, or an underestimated
    reliability) is not reported as a correlation: it is kept as 'disattenuated_raw' with a note.
    """
    if not reliabilities:
        return {}
    bad = {v: r for v, r in reliabilities.items() if not (np.isfinite(r) and r > 0)}
    if bad or not np.isfinite(rho):
        why = ", ".join(f"reliability of {v} is {r:.3f}" for v, r in bad.items()) or "rho undefined"
        return {"disattenuated": math.nan, "disattenuated_note": f"not defined: {why} (needs every reliability > 0)"}
    d = rho / math.sqrt(float(np.prod(list(reliabilities.values()))))
    if abs(d) > 1:
        return {"disattenuated": math.nan, "disattenuated_raw": d,
                "disattenuated_note": "exceeds 1 in magnitude: measurement errors correlate (the same eval "
                                      "examples measure both) or a reliability is underestimated"}
    return {"disattenuated": float(d)}


def example_weights(N: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, N]: each row the weights (multiplicity / N) of a bootstrap resample of N examples."""
    rng = np.random.default_rng(seed + 1)
    return rng.multinomial(N, np.full(N, 1.0 / N), size=n_boot).astype(float) / N


def example_bootstrap_spearman(cols, per_example: dict, x: str, y: str, counts: np.ndarray):
    """Spearman rho of x and y over heads for each resample of the eval examples (rows of
    `counts`, from example_weights): columns with per-example values (col -> [N, 1 + heads]
    losses) are recomputed from the resample (the same examples for both), the others stay
    fixed. None when neither column has per-example values."""
    if x not in per_example and y not in per_example:
        return None
    n_boot = counts.shape[0]

    def resampled(v):
        if v not in per_example:
            return np.broadcast_to(np.asarray(cols[v], float), (n_boot, len(cols[v])))
        m = per_example[v].astype(float)
        return counts @ (m[:, 1:] - m[:, :1])  # [n_boot, heads]: importance of each resample
    return _rowwise_pearson(_rank_rows(resampled(x)), _rank_rows(resampled(y)))


def undefined_pair(n: int, k: int) -> dict:
    """pair_stats of scores that cannot be ranked (a constant column, fewer than 3 heads): every
    statistic there, NaN, so readers index it as any other pair and show it as undefined."""
    nan = math.nan
    return {"n": int(n), "spearman": nan, "p_value": nan, "ci95": [nan, nan], "boot_se": nan, "kendall_tau": nan,
            "kendall_p": nan, "top_k": top_k_overlap(np.zeros(n), np.zeros(n), k), "partial_spearman_layer": nan,
            "within_layer_perm_p": nan, "note": "constant or too few values"}


def pair_stats(a, b, layers, k: int, n_boot: int, n_perm: int, seed: int) -> dict:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b, layers = a[ok], b[ok], np.asarray(layers)[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return undefined_pair(len(a), k)
    rho, p = stats.spearmanr(a, b)
    tau, tau_p = stats.kendalltau(a, b)
    boots = bootstrap_spearman(a, b, bootstrap_indices(len(a), n_boot, seed))
    return {"n": int(len(a)), "spearman": float(rho), "p_value": float(p), "ci95": percentile_ci(boots),
            "boot_se": float(np.nanstd(boots)), "kendall_tau": float(tau), "kendall_p": float(tau_p),
            "top_k": top_k_overlap(a, b, k),
            "partial_spearman_layer": partial_spearman_layer(a, b, layers),
            "within_layer_perm_p": within_layer_permutation_p(a, b, layers, n_perm, seed)}


def run_stats(table, pairs, per_example: dict | None = None, k: int = 20, n_boot: int = 2000,
              n_perm: int = 1000, seed: int = 0, n_boot_examples: int = 1000) -> dict:
    """stats.json for one run: each (x, y) of `pairs` present in the table, with a bootstrap CI
    over heads ('ci95') and, where a column has per-example values, one over eval examples
    ('ci95_examples'); the split-half reliability of every column with per-example values
    (`per_example`: column -> [N, 1 + heads]); correlations disattenuated by those reliabilities."""
    per_example = {c: m for c, m in (per_example or {}).items() if m is not None}
    rel = {name: split_half_reliability(m, seed=seed) for name, m in per_example.items()}
    out = {}
    for x, y in pairs:
        if x not in table or y not in table:
            continue
        s = pair_stats(table[x].to_numpy(), table[y].to_numpy(), table["layer"].to_numpy(), k, n_boot, n_perm,
                       seed)
        ex = None if not per_example else example_bootstrap_spearman(
            table, per_example, x, y, example_weights(len(next(iter(per_example.values()))), n_boot_examples, seed))
        if ex is not None and np.isfinite(s["spearman"]):
            s["ci95_examples"] = percentile_ci(ex)
        s.update(disattenuated(s["spearman"], {v: rel[v]["reliability"] for v in (x, y) if v in rel}))
        out[f"{x}~{y}"] = s
    return {"n_heads": int(len(table)), "k": k, "n_boot": n_boot, "n_perm": n_perm, "seed": seed,
            "n_boot_examples": n_boot_examples, "reliability": rel, "pairs": out}
