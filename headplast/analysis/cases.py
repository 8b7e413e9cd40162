"""Counter-examples to "importance = plasticity": important-but-static and plastic-but-unimportant heads;
and to "a large update is what matters": moved-but-inert and small-but-decisive heads."""

from __future__ import annotations

import numpy as np


def _top(x: np.ndarray, q: float) -> set:
    k = int(round(q * len(x)))
    return set(np.argsort(-x, kind="stable")[:k].tolist())


def _bottom(x: np.ndarray, q: float) -> set:
    k = int(round(q * len(x)))
    return set(np.argsort(x, kind="stable")[:k].tolist())


def counter_examples(table, importance: str = "I_pre", update: str = "U", top_q: float = 0.2,
                     bottom_q: float = 0.5) -> dict:
    """Heads in the top `top_q` of one measure and the bottom `bottom_q` of the other.

    Also the count expected if the two measures were independent: n * top_q * bottom_q.
    """
    imp, upd = table[importance].to_numpy(float), table[update].to_numpy(float)
    n = len(imp)
    static = sorted(_top(imp, top_q) & _bottom(upd, bottom_q))
    plastic = sorted(_top(upd, top_q) & _bottom(imp, bottom_q))
    expected = round(top_q * n) * round(bottom_q * n) / n
    describe = _describer(table)
    return {"importance": importance, "update": update, "top_quantile": top_q, "bottom_quantile": bottom_q,
            "n_heads": n,
            "important_but_static": {"count": len(static), "expected_if_independent": expected,
                                     "heads": describe(static)},
            "plastic_but_unimportant": {"count": len(plastic), "expected_if_independent": expected,
                                        "heads": describe(plastic)}}


def _describer(table):
    def describe(ix):
        return [{c: (int(v) if c in ("layer", "head") else float(v)) for c, v in table.iloc[i].items()} for i in ix]
    return describe


def effect_cases(table, update: str = "U", effect: str = "effect_fwd", top_q: float = 0.2,
                 bottom_q: float = 0.5) -> dict:
    """moved-but-inert: top `top_q` of the update, bottom `bottom_q` of |effect| (its update barely
    changes the loss); small-but-decisive: bottom `bottom_q` of the update, top `top_q` of the effect."""
    upd, eff = table[update].to_numpy(float), table[effect].to_numpy(float)
    n = len(upd)
    inert = sorted(_top(upd, top_q) & _bottom(np.abs(eff), bottom_q))
    decisive = sorted(_bottom(upd, bottom_q) & _top(eff, top_q))
    expected = round(top_q * n) * round(bottom_q * n) / n
    describe = _describer(table)
    return {"moved_but_inert": {"update": update, "effect": effect, "count": len(inert),
                                "expected_if_independent": expected, "heads": describe(inert)},
            "small_but_decisive": {"update": update, "effect": effect, "count": len(decisive),
                                   "expected_if_independent": expected, "heads": describe(decisive)}}
