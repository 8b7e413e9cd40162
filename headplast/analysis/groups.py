"""K/V-group rows (grouped-query attention): one row per layer and K/V group.

Under grouped-query attention G query heads share one K/V head, so a statistic about K or V has
one independent value per group, not one per query head (a query head's U_k, U_v are its group's
with a 1/G share of the squared norm, identical across the G heads). The group table:
- I_pre, I_post: the sum of the group's query heads' importances (each head removed alone);
- U, U_q, U_k, U_v, U_o, W0: the Frobenius norm over the group (the heads' squares added: U_k is
  ||ΔW_K^g||_F, the group's whole K update, U the norm of every Q/K/V/O parameter of the group);
- group_I_pre, group_I_post, group_effect_fwd, group_effect_rev (measured with --kv-group-effect):
  the group's own values (its heads removed, or updated, at once).
The summed importance is a description of the group's heads (each removed alone), not the loss
from removing the group at once: interactions and opposite signs within a group are not in it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SUMMED = ("I_pre", "I_post")
NORMS = ("U", "U_q", "U_k", "U_v", "U_o", "W0")
OWN = ("group_I_pre", "group_I_post", "group_effect_fwd", "group_effect_rev")
PAIRS = (("I_pre", "U"), ("I_pre", "U_k"), ("I_pre", "U_v"), ("I_post", "U"), ("I_post", "U_k"),
         ("I_post", "U_v"), ("group_I_pre", "U"), ("group_I_pre", "U_k"), ("group_I_pre", "U_v"),
         ("group_I_post", "U"), ("I_pre", "group_effect_fwd"), ("group_I_pre", "group_effect_fwd"),
         ("U", "group_effect_fwd"), ("I_post", "group_effect_rev"), ("U", "group_effect_rev"))
DEFINITION = ("one row per layer and K/V group: I_pre, I_post summed over the group's query heads (each removed "
              "alone); group_I_pre, group_I_post the group's query heads removed at once (--kv-group-effect); U, "
              "U_q, U_k, U_v, U_o, W0 the Frobenius norm over the group (U_k = ||ΔW_K^g||); group_effect_* the "
              "group's own")


def group_table(df: pd.DataFrame, group_size: int) -> pd.DataFrame:
    """heads table [L*H rows] -> group table [L*H/G rows]: layer, kv_group and the columns above
    that the heads table has."""
    if group_size < 1 or df["head"].max() + 1 < group_size or (df["head"].max() + 1) % group_size:
        raise ValueError(f"{df['head'].max() + 1} query heads do not split into K/V groups of {group_size}")
    keys = [df["layer"].rename("layer"), (df["head"] // group_size).rename("kv_group")]

    def grouped(col: pd.Series):  # by (layer, kv_group), sorted: the rows of `out`
        return col.groupby(keys, sort=True)
    out = grouped(df["head"]).size().index.to_frame(index=False)  # layer, kv_group
    for c in SUMMED:
        if c in df:
            out[c] = grouped(df[c]).sum(min_count=group_size).to_numpy()
    for c in NORMS:
        if c in df:
            out[c] = np.sqrt(grouped(df[c] ** 2).sum(min_count=group_size).to_numpy())
    for c in OWN:
        if c in df:
            by = grouped(df[c])
            first, spread = by.first().to_numpy(), (by.max() - by.min()).to_numpy()
            if np.nanmax(np.abs(spread), initial=0.0) > 0:
                raise ValueError(f"{c} differs between heads of one K/V group: not a group measurement")
            out[c] = first
    return out


def group_per_example(m: np.ndarray, n_layers: int, group_size: int) -> np.ndarray:
    """Per-example losses [N, 1 + L*H] (column 0 unchanged, then one per head) -> [N, 1 + L*n_kv] whose
    group columns minus column 0 are the sums of the group's heads' differences (so the example
    intervals of the summed importance come from the same examples)."""
    N = m.shape[0]
    diff = (m[:, 1:] - m[:, :1]).reshape(N, n_layers, -1, group_size).sum(-1).reshape(N, -1)  # [N, L*n_kv]
    return np.concatenate([m[:, :1], m[:, :1] + diff], 1)
