"""What a step reports, and the freshness check every step makes before it runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from headplast.errors import HeadplastError
from headplast.store import locks, records
from headplast.steps.versions import version_of
from headplast.store.io import clean_temporaries


@dataclass(frozen=True)
class Outcome:
    status: str  # ran | skipped
    path: Path  # the folder the step wrote (a run, a comparison, ...)
    detail: str = ""  # one line for the log
    timings: dict = field(default_factory=dict)


def fresh_or_refuse(base: Path, step: str, key: str, force: bool, fix: str = "") -> bool:
    """True when `step` in `base` is up to date for `key` (skip it). Outputs altered since the
    step wrote them are an error (never silently reused, never silently overwritten)."""
    if force:
        return False
    state = records.freshness(base, step, key)
    if state.state == "changed":
        raise HeadplastError(f"{base}: {state.detail} altered, truncated or removed after step '{step}' wrote it "
                             f"(content differs from the hash in {records.record_path(base, step)})",
                             fix or "re-run the command with --force to rebuild it")
    return state.fresh


def run_recorded(base: Path, step: str, key: str, outputs, compute, **extra) -> float:
    """Run `compute()` (which writes `outputs` into base), then record them under `key`. Returns seconds."""
    base.mkdir(parents=True, exist_ok=True)
    clean_temporaries(base)  # what a killed run of this step left
    # forget the old record first: a run killed half-way then reads as never done, not as altered
    records.record_path(base, step).unlink(missing_ok=True)
    t = time.time()
    compute()
    secs = time.time() - t
    records.write_record(base, step, key, outputs, seconds=secs, version=version_of(step), **extra)
    return secs


def recorded_step(base: Path, step: str, key: str, outputs, write, force: bool, detail=lambda: "",
                  fix: str = "", check=lambda: None) -> Outcome:
    """The freshness rule as one call: skip `step` when up to date, else `write()` and record it.

    Up-to-date steps are only read (no lock, nothing written: a read-only copy of finished
    results works). Otherwise the folder is locked, freshness is checked again (another
    process may have just done the work), `check()` validates the inputs before anything
    is removed, and only then the step runs."""
    if fresh_or_refuse(base, step, key, force, fix):
        return Outcome("skipped", base, detail())
    with locks.hold(base, f"{base} (step '{step}')"):
        if fresh_or_refuse(base, step, key, force, fix):
            return Outcome("skipped", base, detail())
        check()
        run_recorded(base, step, key, outputs, write)
    return Outcome("ran", base, detail())
