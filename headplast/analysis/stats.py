"""Statistics over heads: rank correlations with bootstrap CIs, top-K overlap, layer control,
split-half reliability of importance and disattenuated correlations.

All functions take plain arrays (one value per head) and are deterministic given `seed`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from headplast.analysis.names import pair_name


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


def _residualise_rows(R: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows of R with each label group's mean removed (the same labels for every row)."""
    _, inv = np.unique(labels, return_inverse=True)
    G = np.eye(inv.max() + 1)[inv]  # [n, groups]
    return R - ((R @ G) / G.sum(0)) @ G.T


def within_layer_rows(A: np.ndarray, B: np.ndarray, labels) -> np.ndarray:
    """partial_spearman_layer of each row of A and B (ranks within the row, layer means removed)."""
    labels = np.asarray(labels)
    return _rowwise_pearson(_residualise_rows(_rank_rows(A), labels), _residualise_rows(_rank_rows(B), labels))


def layer_resamples(layers, n_boot: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A layer-block bootstrap: each resample draws as many layers as there are, with replacement,
    and keeps every head of each (heads of a layer share its depth profile, so layers, not heads,
    are the independent units). Blocks of (indices [k, m], slot labels [m]); each slot is a layer
    of its own in the resample (a layer drawn twice is two layers). Resamples of the same length
    share a block, so statistics are computed for many at once."""
    layers = np.asarray(layers)
    groups = [np.flatnonzero(layers == l) for l in np.unique(layers)]
    L = len(groups)
    choice = np.random.default_rng(seed).integers(0, L, size=(n_boot, L))
    sizes = {len(g) for g in groups}
    if len(sizes) == 1:
        h = sizes.pop()
        return [(np.stack(groups)[choice].reshape(n_boot, L * h), np.repeat(np.arange(L), h))]
    return [(np.concatenate([groups[c] for c in row])[None],
             np.repeat(np.arange(L), [len(groups[c]) for c in row])) for row in choice]


def resample_rows(blocks) -> list[np.ndarray]:
    """Every resample's indices, one array each (for statistics computed one resample at a time)."""
    return [row for idx, _ in blocks for row in idx]


def layer_bootstrap_spearman(a, b, blocks) -> tuple[np.ndarray, np.ndarray]:
    """(across-heads rho, within-layer rho) of every layer-block resample."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    across, within = [], []
    for idx, labels in blocks:
        RA, RB = _rank_rows(a[idx]), _rank_rows(b[idx])
        across.append(_rowwise_pearson(RA, RB))
        within.append(_rowwise_pearson(_residualise_rows(RA, labels), _residualise_rows(RB, labels)))
    return np.concatenate(across), np.concatenate(within)


def _residualised(R: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Rows of R [k, n] minus their least-squares fit on X [k, n, p] (row by row, batched)."""
    beta = np.einsum("kpn,kn->kp", np.linalg.pinv(X), R)
    return R - np.einsum("knp,kp->kn", X, beta)


def _partial_rows(A: np.ndarray, B: np.ndarray, C: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Partial Spearman of each row of A and B [k, n] given the columns of C [k, n, c] and a group
    per label (labels [n], the same for every row): ranks (each row's, each covariate's) regressed
    on the covariates' ranks and one indicator per group (the intercept), Pearson of the residuals."""
    _, inv = np.unique(labels, return_inverse=True)
    G = np.broadcast_to(np.eye(inv.max() + 1)[inv], (len(A), len(inv), inv.max() + 1))
    X = np.concatenate([stats.rankdata(C, axis=1), G], axis=2)
    return _rowwise_pearson(_residualised(_rank_rows(A), X), _residualised(_rank_rows(B), X))


def partial_spearman(a, b, covariates, layers) -> float:
    """Spearman correlation of a and b given covariates [n, c] and layer: does a predict b beyond
    what the covariates and the layer predict? (partial correlation of ranks)"""
    a, b = np.asarray(a, float)[None], np.asarray(b, float)[None]
    C = np.asarray(covariates, float).reshape(a.shape[1], -1)[None]
    return float(_partial_rows(a, b, C, np.asarray(layers))[0])


def layer_bootstrap_partial(a, b, covariates, blocks) -> np.ndarray:
    """partial_spearman of every layer-block resample (each slot its own layer)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    C = np.asarray(covariates, float).reshape(len(a), -1)
    return np.concatenate([_partial_rows(a[idx], b[idx], C[idx], labels) for idx, labels in blocks])


def beyond_stats(a, b, covariates, layers, n_boot: int, seed: int, margin: float | None = None) -> dict:
    """partial_spearman with its layer-block interval (the same resamples as pair_stats')."""
    a, b, C = np.asarray(a, float), np.asarray(b, float), np.asarray(covariates, float).reshape(len(a), -1)
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(C).all(1)
    a, b, C, layers = a[ok], b[ok], C[ok], np.asarray(layers)[ok]
    nan = math.nan
    if len(a) < C.shape[1] + len(np.unique(layers)) + 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"spearman": nan, "ci95_layers": [nan, nan], "ci90_layers": [nan, nan], "p_layers": nan,
                "tost_p_layers": nan, "n_resamples_layers": 0, "note": "constant or too few values"}
    est = partial_spearman(a, b, C, layers)
    boots = layer_bootstrap_partial(a, b, C, layer_resamples(layers, n_boot, seed))
    return {"spearman": est, **_suffixed(interval_summary(boots, est, margin=margin), "layers")}


def holm(p_values: dict) -> dict:
    """Holm's step-down adjustment of a family of p-values ({name: p}; NaN stays NaN, outside the
    family): adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    names = [k for k, p in p_values.items() if p is not None and np.isfinite(p)]
    order = sorted(names, key=lambda k: p_values[k])
    m, out, running = len(order), {k: math.nan for k in p_values}, 0.0
    for j, k in enumerate(order):
        running = max(running, min(1.0, (m - j) * p_values[k]))
        out[k] = running
    return out


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
    return _reliability(np.asarray(rs))


def _reliability(rs: np.ndarray) -> dict:
    """Split-half reliability from the Spearman correlations of the halves of each split."""
    half = fisher_z_mean(rs)
    lo, hi = percentile_ci(rs)
    return {"reliability": spearman_brown(half) if np.isfinite(half) else math.nan, "half_rho": half,
            "range95": [spearman_brown(lo), spearman_brown(hi)] if np.isfinite(lo) else [math.nan, math.nan],
            "n_splits": int(len(rs))}


def halves_reliability(halves: np.ndarray) -> dict:
    """split_half_reliability of a measure computed on both halves of each random split already
    (halves [splits, 2, heads]: a measure that is not a mean of per-example values, e.g. CKA)."""
    halves = np.asarray(halves, float)
    rs = []
    for a, b in halves:
        ok = np.isfinite(a) & np.isfinite(b)  # a head undefined on a half (a constant output) is left out
        if ok.sum() >= 3:
            rs.append(spearman(a[ok], b[ok]))
    rs = np.asarray(rs)
    rs = rs[np.isfinite(rs)]
    if len(rs) == 0:
        return {"reliability": math.nan, "half_rho": math.nan, "range95": [math.nan, math.nan], "n_splits": 0,
                "note": "no split with two halves of 3 or more defined heads"}
    return _reliability(rs)


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


def deflation(diff: np.ndarray) -> float:
    """lambda in [0, 1] with which the observed importance (mean of `diff` [N, heads] over
    examples) is shrunk toward its mean before a resample's noise is added: the observed values
    already carry the examples' noise, so a resample around them would carry it twice (its
    correlations lean toward 0, and vary less than the statistic does). lambda matches the
    variance over heads to the signal's, var(mean) - mean squared standard error."""
    N = diff.shape[0]
    if N < 2:
        return 1.0
    e = float(np.mean(diff.var(0, ddof=1) / N))
    total = float(diff.mean(0).var(ddof=1))
    signal = max(total - e, 0.0)
    return math.sqrt(signal / total) if total > 0 else 1.0


def example_resampled(cols, per_example: dict, v: str, counts: np.ndarray) -> np.ndarray:
    """[n_boot, heads]: column v for each resample of the eval examples (rows of `counts`): the
    observed importance shrunk by `deflation` plus the resample's deviation from it; a column
    without per-example values stays fixed."""
    n_boot = counts.shape[0]
    if v not in per_example:
        return np.broadcast_to(np.asarray(cols[v], float), (n_boot, len(cols[v])))
    m = per_example[v].astype(float)
    diff = m[:, 1:] - m[:, :1]
    mean = diff.mean(0)
    centre = mean.mean() + deflation(diff) * (mean - mean.mean())
    return centre + (counts @ diff - mean)


def example_bootstrap_rows(cols, per_example: dict, x: str, y: str, counts: np.ndarray):
    """(x, y) as [n_boot, heads] for each resample of the eval examples (the same examples for
    both), or None when neither column has per-example values."""
    if x not in per_example and y not in per_example:
        return None
    return example_resampled(cols, per_example, x, counts), example_resampled(cols, per_example, y, counts)


def example_bootstrap_spearman(cols, per_example: dict, x: str, y: str, counts: np.ndarray):
    """Spearman rho of x and y over heads for each resample of the eval examples (rows of
    `counts`, from example_weights), importance recomputed from the resample (example_resampled).
    None when neither column has per-example values."""
    rows = example_bootstrap_rows(cols, per_example, x, y, counts)
    return None if rows is None else _rowwise_pearson(_rank_rows(rows[0]), _rank_rows(rows[1]))


def example_bootstrap_within(cols, per_example: dict, x: str, y: str, counts: np.ndarray, layers):
    """The within-layer rho (partial_spearman_layer) of each resample of the eval examples."""
    rows = example_bootstrap_rows(cols, per_example, x, y, counts)
    return None if rows is None else within_layer_rows(rows[0], rows[1], np.asarray(layers))


def centred(samples: np.ndarray, estimate: float, correlation: bool = True) -> np.ndarray:
    """Bootstrap samples moved so that their median is the estimate (on Fisher's z scale for a
    correlation, so they stay in [-1, 1]): an interval from them is centred on the estimate."""
    s = np.asarray(samples, float)
    if not np.isfinite(estimate) or not np.isfinite(s).any():
        return s
    if correlation:
        z = np.arctanh(np.clip(s, -0.999999, 0.999999))
        return np.tanh(z - np.nanmedian(z) + np.arctanh(np.clip(estimate, -0.999999, 0.999999)))
    return s - np.nanmedian(s) + estimate


def bootstrap_p(samples, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of `null` (the percentile interval at level 1 - p just reaches
    it): 2 min(share of samples <= null, share >= null), each counted with the observed one. Where
    no sample reaches the null this is its bound 2 / (B + 1), not an estimate of p: a Holm family
    of m tests can only claim what 2m / (B + 1) < alpha allows (compare.secondary_family says
    which tests cannot)."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return math.nan
    return float(min(1.0, 2 * (1 + min(np.sum(s <= null), np.sum(s >= null))) / (len(s) + 1)))


def smallest_p(n_resamples: int) -> float:
    """The smallest p bootstrap_p can give with n resamples."""
    return min(1.0, 2 / (n_resamples + 1)) if n_resamples > 0 else math.nan


def equivalence_p(samples, margin: float) -> float:
    """TOST (Lakens 2017) on bootstrap samples: the larger of the one-sided p-values of
    'value >= margin' and 'value <= -margin'; below alpha iff the (1 - 2 alpha) percentile
    interval lies inside (-margin, margin)."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return math.nan
    return float(max(1 + np.sum(s >= margin), 1 + np.sum(s <= -margin)) / (len(s) + 1))


def interval_summary(samples, estimate: float, level: float = 0.95, margin: float | None = None) -> dict:
    """ci95, ci90 (TOST's interval), p (of 0) and, with a margin, TOST's p of bootstrap samples of
    a correlation."""
    out = {"ci95": percentile_ci(samples, level), "ci90": percentile_ci(samples, 0.90), "p": bootstrap_p(samples),
           "n_resamples": int(np.isfinite(np.asarray(samples, float)).sum())}
    if margin is not None:
        out["tost_p"] = equivalence_p(samples, margin)
    return out


def undefined_pair(n: int, k: int) -> dict:
    """pair_stats of scores that cannot be ranked (a constant column, fewer than 3 heads): every
    statistic there, NaN, so readers index it as any other pair and show it as undefined."""
    nan = math.nan
    return {"n": int(n), "spearman": nan, "p_value": nan, "ci95": [nan, nan], "boot_se": nan, "kendall_tau": nan,
            "kendall_p": nan, "top_k": top_k_overlap(np.zeros(n), np.zeros(n), k), "partial_spearman_layer": nan,
            "within_layer_perm_p": nan, "ci95_layers": [nan, nan], "ci90_layers": [nan, nan], "p_layers": nan,
            "tost_p_layers": nan, "n_resamples_layers": 0,
            "within_layer": {"spearman": nan, "perm_p": nan, "ci95_layers": [nan, nan], "ci90_layers": [nan, nan],
                             "p_layers": nan, "tost_p_layers": nan, "n_resamples_layers": 0},
            "note": "constant or too few values"}


def _suffixed(summary: dict, suffix: str) -> dict:
    return {f"{k}_{suffix}": v for k, v in summary.items()}


def pair_stats(a, b, layers, k: int, n_boot: int, n_perm: int, seed: int, margin: float | None = None) -> dict:
    """Spearman rho of a and b over heads with its intervals: 'ci95' resamples heads as if they
    were independent (kept for comparison); 'ci95_layers' resamples layers (layer_resamples), as
    do the within-layer rho's ('within_layer'); with `margin`, TOST p-values of |rho| >= margin."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b, layers = a[ok], b[ok], np.asarray(layers)[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return undefined_pair(len(a), k)
    rho, p = stats.spearmanr(a, b)
    tau, tau_p = stats.kendalltau(a, b)
    boots = bootstrap_indices(len(a), n_boot, seed)
    boots = bootstrap_spearman(a, b, boots)
    across, within = layer_bootstrap_spearman(a, b, layer_resamples(layers, n_boot, seed))
    partial = partial_spearman_layer(a, b, layers)
    perm_p = within_layer_permutation_p(a, b, layers, n_perm, seed)
    return {"n": int(len(a)), "spearman": float(rho), "p_value": float(p), "ci95": percentile_ci(boots),
            "boot_se": float(np.nanstd(boots)), "kendall_tau": float(tau), "kendall_p": float(tau_p),
            "top_k": top_k_overlap(a, b, k), "partial_spearman_layer": partial, "within_layer_perm_p": perm_p,
            **_suffixed(interval_summary(across, rho, margin=margin), "layers"),
            "within_layer": {"spearman": partial, "perm_p": perm_p,
                             **_suffixed(interval_summary(within, partial, margin=margin), "layers")}}


def run_stats(table, pairs, per_example: dict | None = None, k: int = 20, n_boot: int = 2000,
              n_perm: int = 1000, seed: int = 0, n_boot_examples: int = 1000, margin: float = 0.2,
              beyond: dict | None = None, given: tuple[str, ...] = (), halves: dict | None = None) -> dict:
    """stats.json for one run: each (x, y) of `pairs` present in the table, with bootstrap CIs
    over heads ('ci95', heads as independent), over layers ('ci95_layers') and, where a column has
    per-example values, over eval examples ('ci95_examples': deflated resamples, centred on the
    estimate); the same for the within-layer rho ('within_layer'); TOST p-values of |rho| >= margin;
    the split-half reliability of every column with per-example values (`per_example`: column ->
    [N, 1 + heads]); correlations disattenuated by those reliabilities. `beyond`: {x: (y, ...)},
    pairs whose partial ρ given the columns `given` and the layer is added ('beyond'). `halves`:
    column -> [splits, 2, heads], a measure computed on random halves of the eval data already
    (its reliability; halves_reliability)."""
    beyond_of = beyond or {}
    per_example = {c: m for c, m in (per_example or {}).items() if m is not None}
    rel = {name: split_half_reliability(m, seed=seed) for name, m in per_example.items()}
    rel.update({name: halves_reliability(h) for name, h in (halves or {}).items() if h is not None})
    counts = None if not per_example else example_weights(len(next(iter(per_example.values()))),
                                                            n_boot_examples, seed)
    out = {}
    for x, y in pairs:
        if x not in table or y not in table:
            continue
        layers = table["layer"].to_numpy()
        s = pair_stats(table[x].to_numpy(), table[y].to_numpy(), layers, k, n_boot, n_perm, seed, margin)
        ok = np.isfinite(table[x].to_numpy(float)) & np.isfinite(table[y].to_numpy(float))
        if counts is not None and np.isfinite(s["spearman"]) and ok.all():
            ex = example_bootstrap_spearman(table, per_example, x, y, counts)
            if ex is not None:
                s.update(_suffixed(interval_summary(centred(ex, s["spearman"]), s["spearman"], margin=margin),
                                   "examples"))
                s["example_interval"] = "deflated resamples, centred on the estimate"
                w = s["within_layer"]
                ew = centred(example_bootstrap_within(table, per_example, x, y, counts, layers), w["spearman"])
                w.update(_suffixed(interval_summary(ew, w["spearman"], margin=margin), "examples"))
        s.update(disattenuated(s["spearman"], {v: rel[v]["reliability"] for v in (x, y) if v in rel}))
        if x in beyond_of and y in beyond_of[x] and set(given) <= set(table.columns):
            s["beyond"] = {"given": [*given, "layer"],
                           **beyond_stats(table[x].to_numpy(), table[y].to_numpy(), table[list(given)].to_numpy(),
                                          layers, n_boot, seed, margin)}
        out[pair_name(x, y)] = s
    return {"n_heads": int(len(table)), "k": k, "n_boot": n_boot, "n_perm": n_perm, "seed": seed,
            "n_boot_examples": n_boot_examples, "equivalence_margin": margin, "head_resampling": "layers",
            "reliability": rel, "pairs": out}


def _finite_ci(ci) -> bool:
    return ci is not None and len(ci) == 2 and all(v is not None and np.isfinite(v) for v in ci)


def combined(p: dict, within: bool = False, part: str | None = None) -> dict:
    """The inference the answer uses for a correlation of stats.json (its `pairs` entry p, or its
    `part`: 'within_layer' (also `within`), 'beyond'): the estimate; the union of the layer-block
    and the example bootstrap intervals (95%, and 90% for TOST); p the larger of their p-values (0
    lies outside the union iff outside both). Keys that a file lacks (written before layer-aware
    intervals) are undefined: NaN."""
    part = "within_layer" if within else part
    q = (p.get(part) or {}) if part else p
    est = q.get("spearman", p.get("partial_spearman_layer", math.nan) if within else math.nan)
    nan2 = [math.nan, math.nan]
    ci95, ci90 = q.get("ci95_layers") or nan2, q.get("ci90_layers") or nan2
    ps, tost = [q.get("p_layers", math.nan)], [q.get("tost_p_layers", math.nan)]
    floors = [smallest_p(q.get("n_resamples_layers", 0))]
    if _finite_ci(q.get("ci95_examples")):
        ci95, ci90 = union_ci(ci95, q["ci95_examples"]), union_ci(ci90, q.get("ci90_examples") or nan2)
        ps.append(q.get("p_examples", math.nan))
        tost.append(q.get("tost_p_examples", math.nan))
        floors.append(smallest_p(q.get("n_resamples_examples", 0)))
    return {"estimate": _num(est), "ci95": [_num(v) for v in ci95], "ci90": [_num(v) for v in ci90],
            "p": max(_num(v) for v in ps), "tost_p": max(_num(v) for v in tost), "p_floor": max(floors)}


def _num(v) -> float:
    return math.nan if v is None else float(v)


def union_ci(a: list, b: list | None) -> list:
    """The wider interval: the union of the two (b may be absent or undefined: then a)."""
    if not _finite_ci(b):
        return list(a)
    return [min(a[0], b[0]), max(a[1], b[1])]
