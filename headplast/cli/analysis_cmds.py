"""Subcommands of the analysis side (plot, compare, aggregate, ranks, pipeline)."""

from __future__ import annotations


def register(sub, add_common) -> None:
    return None
