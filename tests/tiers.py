"""Test tiers: `pytest -q` runs everything (CI); `pytest -q -m "not slow"` is the fast tier.

A test checked on every architecture keeps one architecture in the fast tier; the others are
marked slow and still run in the full suite."""

import pytest


def slow_except(values, *fast):
    """values as parameters, each not in `fast` marked slow (test ids unchanged)."""
    unknown = set(fast) - set(values)
    assert not unknown, f"not among the values: {sorted(unknown)}"
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]
