"""Flag metadata for config dataclass fields: every option is declared once, on its config.

A field's default is the flag's default; `opt(...)` adds what argparse needs beyond the
field's name and type (help, choices, another flag name, aliases). `cli/options.py` builds
the parsers from these declarations, so a config and its flags cannot drift apart.
"""

from __future__ import annotations

from dataclasses import field


def opt(help: str = "", *, flag: str | None = None, aliases: tuple[str, ...] = (), choices=None,
        sep: str | None = None, cli: bool = True, metavar: str | None = None) -> dict:
    """Metadata for a dataclass field.

    flag: the flag's name (default: --field-name); aliases: further names; sep: a tuple
    field given as one separated string (e.g. "a,b") instead of several values; cli=False:
    not a flag (set by the program, e.g. a nested config).
    """
    return {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": choices, "sep": sep,
            "cli": cli, "metavar": metavar}


def option(default, help: str = "", **kw):
    """A dataclass field with a default and its flag's metadata."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults (configs are frozen)")
    return field(default=default, metadata=opt(help, **kw))


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
