"""What several benchmark scripts share: a `headplast` child process with its own peak memory,
and a mean ± sd cell."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Child:
    seconds: float
    peak_rss_mib: float
    exit_code: int
    stderr: str  # its last 3,000 characters


def run_headplast(args: list[str]) -> Child:
    """`python -m headplast ARGS` with progress bars off. stderr goes to a file, not a pipe: a
    child that filled a pipe nobody reads before it exits would block, and the wait with it."""
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "headplast", *args], env={**os.environ, "TQDM_DISABLE": "1"},
                             stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)  # its own peak RSS (Linux: KiB)
        secs = time.perf_counter() - t
        err.seek(0)
        return Child(secs, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), err.read()[-3000:])


def mean_sd(xs: list[float], fmt: str = "{:.4f}") -> str:
    """'mean ± sd' (one value: the value)."""
    return fmt.format(statistics.mean(xs)) + (" ± " + fmt.format(statistics.stdev(xs)) if len(xs) > 1 else "")
