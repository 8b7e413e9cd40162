"""Flag metadata for config dataclass fields: every option is declared once, on its config.

A field's default is the flag's default; `opt(...)` adds what argparse needs beyond the
field's name and type (help, choices, another flag name, aliases). `cli/options.py` builds
the parsers from these declarations, so a config and its flags cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import field

from headplast.errors import HeadplastError


def opt(help: str = "", *, flag: str | None = None, aliases: tuple[str, ...] = (), choices=None,
        sep: str | None = None, cli: bool = True, metavar: str | None = None, low=None, high=None,
        low_open: bool = False, high_open: bool = False, deprecated: tuple[str, ...] = ()) -> dict:
    """Metadata for a dataclass field.

    flag: the flag's name (default: --field-name); aliases: further names; deprecated: old
    names that still work, with a warning naming the flag; sep: a tuple
    field given as one separated string (e.g. "a,b") instead of several values; cli=False:
    not a flag (set by the program, e.g. a nested config); low/high: the valid range
    (closed unless low_open/high_open), checked by `validate` when the config is built.
    """
    return {"help": help, "flag": flag, "aliases": tuple(aliases), "deprecated": tuple(deprecated), "choices": choices,
            "sep": sep, "cli": cli, "metavar": metavar, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open}


def option(default, help: str = "", **kw):
    """A dataclass field with a default and its flag's metadata."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults (configs are frozen)")
    return field(default=default, metadata=opt(help, **kw))


# common ranges
POSITIVE = {"low": 0, "low_open": True}  # > 0
NONNEGATIVE = {"low": 0}  # >= 0
FRACTION = {"low": 0, "high": 1, "high_open": True}  # [0, 1)
OPEN_FRACTION = {"low": 0, "high": 1, "low_open": True, "high_open": True}  # (0, 1)


def _range_text(m: dict) -> str:
    lo = "" if m["low"] is None else f"{'>' if m['low_open'] else '>='} {m['low']}"
    hi = "" if m["high"] is None else f"{'<' if m['high_open'] else '<='} {m['high']}"
    return " and ".join(t for t in (lo, hi) if t)


def _in_range(v, m: dict) -> bool:
    if isinstance(v, float) and not math.isfinite(v):
        return False
    if m["low"] is not None and (v < m["low"] or (m["low_open"] and v == m["low"])):
        return False
    return m["high"] is None or (v < m["high"] or (not m["high_open"] and v == m["high"]))


def validate(config) -> None:
    """Check every field with a declared range (call it from __post_init__): a value out of
    range is an error naming the flag, the valid range and the default."""
    from dataclasses import fields

    for f in fields(config):
        m = f.metadata
        if m.get("low") is None and m.get("high") is None:
            continue
        value = getattr(config, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if v is not None and not isinstance(v, bool) and not _in_range(v, m):
                d = f.default
                hint = (f"or leave {flag_name(f)} out for its default" if d is None else
                        f"e.g. the default: {flag_name(f)} {' '.join(map(str, d)) if isinstance(d, tuple) else d}")
                raise HeadplastError(f"{flag_name(f)} must be a finite number {_range_text(m)} (got {v})",
                                     f"pass a value {_range_text(m)}, {hint}")


def flag_name(f) -> str:
    """The flag of a dataclass field: its metadata's `flag`, or --field-name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def as_flags(config, skip=()) -> list[str]:
    """The flags that reproduce `config` from the defaults (fields equal to their default are left out)."""
    from dataclasses import MISSING, fields

    out = []
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in skip or not f.metadata.get("cli", False) or f.default is MISSING or value == f.default:
            continue
        if isinstance(value, bool):
            out.append(flag_name(f) if value else "--no-" + flag_name(f)[2:])
        elif isinstance(value, tuple):
            sep = f.metadata.get("sep")
            out += [flag_name(f), *([sep.join(map(str, value))] if sep else map(str, value))]
        elif value is not None:
            out += [flag_name(f), str(value)]
    return out


def config_from_dict(cls, d: dict):
    """A config (nested configs included) from its `dataclasses.asdict` form, e.g. read from JSON."""
    from dataclasses import fields, is_dataclass

    kw = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if is_dataclass(f.default):
            v = config_from_dict(type(f.default), v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)
