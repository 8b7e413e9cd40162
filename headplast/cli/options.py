"""argparse flags generated from config dataclasses: one declaration per option (its field).

`add_config_args(parser, Cls)` adds a flag per field of Cls (name, type, default, help,
choices from the field and its `opt()` metadata); `config_from_args(Cls, args)` builds the
config back from the parsed namespace. A flag name one parser already has is an error when the
parser is built (two configs declaring one name would otherwise set one field and silently
not the other): rename one, or leave it out where it is added (`exclude`, `without`).
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields


def _base_type(tp):
    """(element type, is_tuple, is_optional) of an annotation such as `tuple[int, ...] | None`."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0], True, optional
    return tp, False, optional


def _parse_number(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got '{text}'") from None
    parse.__name__ = kind.__name__
    return parse


class FlagCollision(ValueError):
    """Two options of one name in one parser (raised when the parser is built)."""


class _Deprecated(argparse.Action):
    """An old name of a flag: sets the same field, with a warning naming the flag to use."""

    def __init__(self, option_strings, dest, new: str = "", what: str = "", **kw):
        super().__init__(option_strings, dest, **kw)
        self.new, self.what = new, what

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"headplast: warning: {option_string} is deprecated: pass {self.new} ({self.what})", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_config_args(parser, cls, exclude=(), only=None, dest_prefix: str = "", title: str | None = None,
                    without=()):
    """Add a flag for every field of `cls` that has flag metadata (except `exclude`; only `only`).

    without: aliases or deprecated names of these fields not to add here (another config of the
    same parser declares them). Any other name the parser already has raises FlagCollision."""
    from headplast.options import flag_name

    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    taken = dict.fromkeys(parser._option_string_actions, "an earlier option")
    for f in fields(cls):
        meta = f.metadata
        if f.name in exclude or (only is not None and f.name not in only) or not meta.get("cli", False):
            continue
        kind, is_tuple, _ = _base_type(hints[f.name])
        names = [flag_name(f), *(n for n in meta.get("aliases", ()) if n not in without)]
        old = [n for n in meta.get("deprecated", ()) if n not in without]
        for n in names + old:
            if n in taken:
                raise FlagCollision(f"{n} ({cls.__name__}.{f.name}) is also {taken[n]} in parser '{parser.prog}': "
                                    "rename one (opt(flag=...)) or leave one out where it is added (exclude=, "
                                    "without=)")
            taken[n] = f"{cls.__name__}.{f.name}"
        default = f.default if f.default is not MISSING else None
        kw = dict(dest=dest_prefix + f.name, default=default, help=meta.get("help", ""))
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
            if kind is str and all(c == c.lower() for c in meta["choices"]):
                kind = str.lower  # --method LoRA works too
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif is_tuple and meta.get("sep"):
            sep = meta["sep"]
            kw["type"] = lambda s, sep=sep, k=kind: tuple(k(v.strip()) for v in s.split(sep) if v.strip())
        elif is_tuple:
            kw.update(nargs="+", type=_parse_number(kind) if kind in (int, float) else kind)
        else:
            kw["type"] = _parse_number(kind) if kind in (int, float) else kind
        if "action" not in kw:
            choices = meta.get("choices")
            kw["metavar"] = meta.get("metavar") or ("{" + ",".join(choices) + "}" if choices else f.name.upper())
        if default is not None and default != () and "action" not in kw:
            shown = (meta.get("sep") or " ").join(map(str, default)) if is_tuple else str(default)
            kw["help"] += f" (default: {shown})".replace("%", "%%")
        group.add_argument(*names, **kw)
        if old:
            if "action" in kw:
                raise TypeError(f"{cls.__name__}.{f.name}: deprecated names of a switch are not supported")
            group.add_argument(*old, **{**kw, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS},
                               action=_Deprecated, new=names[0], what=meta.get("help", "").split(" (")[0])
    return group


def config_from_args(cls, args, dest_prefix: str = "", **overrides):
    """An instance of `cls` from parsed flags (fields without a flag keep their default)."""
    kw = {}
    for f in fields(cls):
        dest = dest_prefix + f.name
        if f.name in overrides:
            kw[f.name] = overrides[f.name]
        elif hasattr(args, dest):
            v = getattr(args, dest)
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)
