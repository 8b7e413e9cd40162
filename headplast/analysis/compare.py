"""FFT vs LoRA on the same task and seed: every statistic of each, their differences, and
whether each difference exceeds its paired bootstrap uncertainty: resampling layers (a layer's
heads together: they share its depth profile), and for the correlations also resampling eval
examples (both runs measured the same examples); a difference is called real only when it
exceeds the wider of the two. Each difference has a bootstrap p-value; all but the primary
endpoint's are secondary (Holm-adjusted by `secondary_family`)."""

from __future__ import annotations

import numpy as np

from headplast.analysis.cases import counter_examples
from headplast.analysis.names import (BEYOND, PRIMARY_PAIR, WITHIN, pair_name, run_test_name,
                                      split_name)
from headplast.analysis.stats import (bootstrap_p, centred, combined, example_bootstrap_spearman,
                                      example_bootstrap_within, example_weights, holm, layer_bootstrap_partial,
                                      layer_bootstrap_spearman, layer_resamples, partial_spearman,
                                      partial_spearman_layer, percentile_ci, resample_rows, smallest_p, spearman,
                                      top_k_overlap, union_ci)
from headplast.store import schema


def rho_keys(dfs: dict) -> tuple[tuple[str, str], ...]:
    """The pairs whose ρ a comparison reports (each schema's `compare`) that both runs have."""
    return tuple((x, y) for x, y in schema.compare_pairs() if all({x, y} <= set(d.columns) for d in dfs.values()))


def beyond_keys(dfs: dict) -> tuple[str, ...]:
    """The plasticity columns whose ρ(I_pre, · | BEYOND_GIVEN, layer) a comparison reports."""
    need = {"I_pre", *schema.BEYOND_GIVEN}
    return tuple(y for y in schema.plasticity_columns() if all(need | {y} <= set(d.columns) for d in dfs.values()))


def _boot_topk(a, b, idx, k):
    return np.array([top_k_overlap(a[i], b[i], k)["overlap"] for i in idx])


def _boot_cases(df, idx, top_q, bottom_q, which):
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        c = counter_examples(df.iloc[i].reset_index(drop=True)[["layer", "head", "I_pre", "U"]], "I_pre", "U",
                             top_q, bottom_q)
        out[j] = c[which]["count"]
    return out




def key_statistics(dfs: dict, k: int, top_q: float, bottom_q: float, n_boot: int, seed: int,
                   n_boot_cases: int | None = None, per_example: dict | None = None,
                   n_boot_examples: int = 2000) -> dict:
    """{statistic: {label: value, 'difference', 'ci95', 'p_value', 'exceeds_uncertainty'}} for two runs.

    Both runs have the same heads, so resampling layers with the same indices gives a paired
    bootstrap distribution of the difference (second label minus first): 'ci95_heads' (named
    for what it resamples before layers were the unit). With per-example values of both runs
    (per_example: label -> {column: [N, 1 + heads]}, on the same eval examples), the correlations
    are also recomputed on the same resamples of examples, centred on the observed difference:
    'ci95_examples'. 'ci95' is the union of the two, 'p_value' the larger of their p-values.
    """
    (la, da), (lb, db) = dfs.items()
    layers = da["layer"].to_numpy()
    blocks = layer_resamples(layers, n_boot, seed)
    pe = per_example or {}
    counts = None
    if pe.get(la) and pe.get(lb):
        counts = example_weights(len(next(iter(pe[la].values()))), n_boot_examples, seed)
    out = {}

    def add(name, va, vb, boot_diff, ex_diff=None):
        ci_heads = percentile_ci(boot_diff)
        ci_ex = None if ex_diff is None else percentile_ci(centred(ex_diff, vb - va, correlation=False))
        ci = union_ci(ci_heads, ci_ex)
        p, floor = bootstrap_p(boot_diff), smallest_p(int(np.isfinite(boot_diff).sum()))
        if ex_diff is not None and np.isfinite(ci_ex).all():
            p = max(p, bootstrap_p(centred(ex_diff, vb - va, correlation=False)))
            floor = max(floor, smallest_p(int(np.isfinite(ex_diff).sum())))
        exceeds = bool(np.isfinite(ci).all() and (ci[0] > 0 or ci[1] < 0))
        out[name] = {la: va, lb: vb, "difference": vb - va, "ci95": ci, "ci95_heads": ci_heads,
                     "ci95_examples": ci_ex, "p_value": p, "p_floor": floor, "exceeds_uncertainty": exceeds,
                     "resampled": "layers"}

    for x, y in rho_keys(dfs):
        (ba, wa), (bb, wb) = (layer_bootstrap_spearman(d[x].to_numpy(float), d[y].to_numpy(float), blocks)
                              for d in (da, db))
        ex = exw = None
        if counts is not None:
            ea = example_bootstrap_spearman(da, pe[la], x, y, counts)
            eb = example_bootstrap_spearman(db, pe[lb], x, y, counts)
            ex = None if ea is None or eb is None else eb - ea
            if (x, y) == ("I_pre", "U") and ex is not None:
                exw = (example_bootstrap_within(db, pe[lb], x, y, counts, layers)
                       - example_bootstrap_within(da, pe[la], x, y, counts, layers))
        add(pair_name(x, y, "rho"), spearman(da[x], da[y]), spearman(db[x], db[y]), bb - ba, ex)
        if (x, y) == ("I_pre", "U"):
            add(WITHIN, *(partial_spearman_layer(d[x], d[y], layers) for d in (da, db)), wb - wa, exw)
    given = list(schema.BEYOND_GIVEN)
    for y in beyond_keys(dfs):  # what importance predicts beyond the gradient, ||W0|| and the layer
        cols = ["I_pre", y, *given]
        ok = np.logical_and.reduce([np.isfinite(d[cols].to_numpy(float)).all(1) for d in (da, db)])
        bl = blocks if ok.all() else layer_resamples(layers[ok], n_boot, seed)  # heads both runs define
        (ra, ba), (rb, bb) = ((partial_spearman(d["I_pre"][ok], d[y][ok], d[given][ok], layers[ok]),
                               layer_bootstrap_partial(d["I_pre"][ok], d[y][ok], d[given][ok], bl)) for d in (da, db))
        add(pair_name("I_pre", y, "rho_beyond"), ra, rb, bb - ba)
    rows = resample_rows(blocks)
    for y in ("U", "Urel"):
        a_i, a_u = da["I_pre"].to_numpy(float), da[y].to_numpy(float)
        b_i, b_u = db["I_pre"].to_numpy(float), db[y].to_numpy(float)
        add(pair_name("I_pre", y, f"top{k}_overlap"), top_k_overlap(a_i, a_u, k)["overlap"],
            top_k_overlap(b_i, b_u, k)["overlap"],
            _boot_topk(b_i, b_u, rows, k) - _boot_topk(a_i, a_u, rows, k))
    # every resample (n_boot_cases: fewer, for speed): with 500, a count's p could not go below 0.004,
    # which a Holm family of 30 tests can never claim
    small = rows[:n_boot_cases]
    for which in ("important_but_static", "plastic_but_unimportant"):
        ca = counter_examples(da, "I_pre", "U", top_q, bottom_q)[which]["count"]
        cb = counter_examples(db, "I_pre", "U", top_q, bottom_q)[which]["count"]
        add(f"n_{which}", ca, cb, _boot_cases(db, small, top_q, bottom_q, which)
            - _boot_cases(da, small, top_q, bottom_q, which))
    return out


SECONDARY_PAIRS = (pair_name("U", "effect_fwd"), pair_name("I_pre", "effect_fwd"))


def secondary_family(keys: dict, stats: dict, alpha: float = 0.05) -> dict:
    """Everything a comparison tests besides the primary endpoint (each method's rho(I_pre, U),
    across heads and within layers): every difference between the two runs and each run's
    correlations of the update effect and of importance beyond the gradient that the answer
    states. Their p-values, Holm-adjusted as one family: {'method', 'alpha', 'tests': {name:
    {'p', 'p_holm'}}}; the name of a run's correlation is '<label>: rho(x,y)'."""
    ps = {name: d.get("p_value", np.nan) for name, d in keys.items()}
    floors = {name: d.get("p_floor", np.nan) for name, d in keys.items()}
    for lab, st in stats.items():
        runs = [(pair_name(*split_name(pair)[1:], "rho"), combined(st["pairs"][pair]))
                for pair in SECONDARY_PAIRS if pair in st["pairs"]]
        if "beyond" in st["pairs"].get(PRIMARY_PAIR, {}):
            runs.append((BEYOND, combined(st["pairs"][PRIMARY_PAIR], part="beyond")))
        for name, inf in runs:
            ps[run_test_name(lab, name)], floors[run_test_name(lab, name)] = inf["p"], inf["p_floor"]
    adj = holm(ps)
    m = sum(1 for p in ps.values() if p is not None and np.isfinite(p))
    # a bootstrap p is at least 2 / (B + 1): with m tests, Holm claims a test only if m times that is below alpha
    blind = sorted(name for name, f in floors.items() if np.isfinite(ps[name]) and np.isfinite(f) and m * f >= alpha)
    return {"method": "Holm", "alpha": alpha, "exploratory": True, "family_size": m,
            "cannot_reach_alpha": blind,
            "tests": {name: {"p": ps[name], "p_holm": adj[name], "p_floor": floors[name]} for name in ps}}
