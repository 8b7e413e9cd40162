"""Counter-examples to "importance = plasticity": important-but-static and plastic-but-unimportant heads."""

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
    cols = [c for c in table.columns]

    def describe(ix):
        return [{c: (int(v) if c in ("layer", "head") else float(v)) for c, v in table.iloc[i][cols].items()}
                for i in ix]
    return {"importance": importance, "update": update, "top_quantile": top_q, "bottom_quantile": bottom_q,
            "n_heads": n,
            "important_but_static": {"count": len(static), "expected_if_independent": expected,
                                     "heads": describe(static)},
            "plastic_but_unimportant": {"count": len(plastic), "expected_if_independent": expected,
                                        "heads": describe(plastic)}}
