"""The names of a pair of heads.csv columns and of the statistics of a pair: one spelling each,
made here and nowhere else.

    pair_name("I_pre", "U")          'I_pre~U'        the pair: its key in stats.json's "pairs",
                                                      which holds every statistic of the pair
    pair_name("I_pre", "U", "rho")   'rho(I_pre,U)'   one statistic of the pair: compare_metrics.json's
                                                      key_statistics, the aggregate, the secondary
                                                      tests ('<label>: rho(I_pre,U)'), tracker metrics
    display_name('rho(I_pre,U)')     'ρ(I_pre, U)'    how text, tables and the report show it
    split_name(name)                 (stat, x, y)     reads any of them back (also the tracker
                                                      spelling before this module, 'rho/I_pre~U')

Both stored spellings are the ones results on disk already use, so old stats.json and
compare_metrics.json files keep reading.
"""

from __future__ import annotations

import re

from headplast.store.schema import BEYOND_GIVEN

SEP = "~"
GREEK = {"rho": "ρ", "partial_rho": "partial ρ", "disattenuated_rho": "disattenuated ρ",
         "rho_within_layer": "within-layer ρ", "kendall_tau": "Kendall's τ", "rho_beyond": "ρ"}
# what a statistic is conditioned on, shown inside its parentheses: ρ(I_pre, U | grad_norm, W0, layer)
GIVEN = {"rho_beyond": ", ".join((*BEYOND_GIVEN, "layer"))}


def pair_name(x: str, y: str, stat: str | None = None) -> str:
    """The pair of columns x, y ('x~y'), or its statistic `stat` ('stat(x,y)')."""
    for c in (x, y):
        if not c or any(ch in c for ch in f"{SEP}(),/ "):
            raise ValueError(f"not a column name: {c!r}")
    return f"{x}{SEP}{y}" if stat is None else f"{stat}({x},{y})"


_STAT = re.compile(r"(?P<stat>[A-Za-z0-9_]+)\((?P<x>[^,()]+),(?P<y>[^,()]+)\)")
_OLD_TRACKER = re.compile(r"(?P<stat>[A-Za-z0-9_]+)/(?P<x>[^~/]+)~(?P<y>[^~/]+)")


def split_name(name: str) -> tuple[str | None, str, str]:
    """(stat or None, x, y) of a name made by pair_name (or the old tracker spelling 'rho/x~y')."""
    m = _STAT.fullmatch(name) or _OLD_TRACKER.fullmatch(name)
    if m:
        return m["stat"], m["x"], m["y"]
    x, sep, y = name.partition(SEP)
    if sep and x and y and SEP not in y:
        return None, x, y
    raise ValueError(f"not the name of a pair or of a pair's statistic: {name!r}")


def stat_of(name: str) -> str | None:
    """The statistic a name is of ('rho' for 'rho(I_pre,U)'); None for a pair or another name."""
    try:
        return split_name(name)[0]
    except ValueError:
        return None


def display_name(name: str, stat: str | None = None) -> str:
    """How text shows a pair's statistic: 'rho(I_pre,U)' -> 'ρ(I_pre, U)'; a pair ('I_pre~U')
    with `stat` as that statistic, without as 'I_pre vs U'."""
    s, x, y = split_name(name)
    s = s or stat
    if s is None:
        return f"{x} vs {y}"
    given = f" | {GIVEN[s]}" if s in GIVEN else ""
    return f"{GREEK.get(s, s)}({x}, {y}{given})"


def run_test_name(label: str, name: str) -> str:
    """One run's statistic among a comparison's secondary tests: 'FFT: rho(U,effect_fwd)'."""
    return f"{label}: {name}"


PRIMARY_PAIR = pair_name("I_pre", "U")  # the question: importance before fine-tuning vs the update
PRIMARY = pair_name("I_pre", "U", "rho")  # its primary endpoint, across heads
WITHIN = pair_name("I_pre", "U", "rho_within_layer")  # and within layers
BEYOND = pair_name("I_pre", "U", "rho_beyond")  # beyond the gradient at θ0, ||W0|| and the layer
