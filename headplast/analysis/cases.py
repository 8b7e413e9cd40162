"""Counter-examples to "importance = plasticity": important-but-static and plastic-but-unimportant heads;
and to "a large update is what matters": moved-but-inert and small-but-decisive heads."""

from __future__ import annotations

import math

import numpy as np

from headplast.analysis.stats import membership, share_count


def _in_both(table, first: np.ndarray, second: np.ndarray, measures: tuple[np.ndarray, np.ndarray]) -> dict:
    """The heads whose share of both sets is positive, their count (the number expected when
    ties at a boundary are broken at random: whole unless a tie was split) and the count expected
    were the two measures independent. A measure equal for every head has no top or bottom:
    count NaN, no heads."""
    n = len(first)
    expected = float(first.sum() * second.sum() / n) if n else math.nan
    if any(np.ptp(x) == 0 for x in measures):
        return {"count": math.nan, "expected_if_independent": expected, "heads": [],
                "note": "undefined: a measure is the same for every head"}
    share = first * second
    ix = np.flatnonzero(share > 0)
    heads = [{**row, **({"share": float(share[i])} if share[i] < 1 else {})}
             for i, row in zip(ix, _describe(table, ix))]
    return {"count": share_count(share), "expected_if_independent": expected, "heads": heads}


def _top(x: np.ndarray, q: float) -> np.ndarray:
    return membership(x, round(q * len(x)), largest=True)


def _bottom(x: np.ndarray, q: float) -> np.ndarray:
    return membership(x, round(q * len(x)), largest=False)


def counter_examples(table, importance: str = "I_pre", update: str = "U", top_q: float = 0.2,
                     bottom_q: float = 0.5) -> dict:
    """Heads in the top `top_q` of one measure and the bottom `bottom_q` of the other.

    Also the count expected if the two measures were independent: n * top_q * bottom_q. Heads tied
    at a quantile's boundary share its remaining places (stats.membership): a head listed with a
    `share` below 1 is a counter-example in that fraction of random tie-breaks.
    """
    imp, upd = table[importance].to_numpy(float), table[update].to_numpy(float)
    return {"importance": importance, "update": update, "top_quantile": top_q, "bottom_quantile": bottom_q,
            "n_heads": len(imp),
            "important_but_static": _in_both(table, _top(imp, top_q), _bottom(upd, bottom_q), (imp, upd)),
            "plastic_but_unimportant": _in_both(table, _top(upd, top_q), _bottom(imp, bottom_q), (imp, upd))}


def _describe(table, ix) -> list[dict]:
    return [{c: (int(v) if c in ("layer", "head") else float(v)) for c, v in table.iloc[i].items()} for i in ix]


def effect_cases(table, update: str = "U", effect: str = "effect_fwd", top_q: float = 0.2,
                 bottom_q: float = 0.5) -> dict:
    """moved-but-inert: top `top_q` of the update, bottom `bottom_q` of |effect| (its update barely
    changes the loss); small-but-decisive: bottom `bottom_q` of the update, top `top_q` of the effect."""
    upd, eff = table[update].to_numpy(float), table[effect].to_numpy(float)
    return {"moved_but_inert": {"update": update, "effect": effect,
                                **_in_both(table, _top(upd, top_q), _bottom(np.abs(eff), bottom_q), (upd, eff))},
            "small_but_decisive": {"update": update, "effect": effect,
                                   **_in_both(table, _bottom(upd, bottom_q), _top(eff, top_q), (upd, eff))}}
