"""The status table of a sweep: one line per job, then the totals."""

from __future__ import annotations

ORDER = ("done", "running", "pending", "failed")


def status_table(rows) -> str:
    """rows: objects with job, status, detail, log (headplast.steps.sweep_jobs.JobStatus)."""
    width = max([len(r.job) for r in rows] + [3])
    lines = []
    for r in rows:
        line = f"{r.status:8s} {r.job:{width}s}  {r.detail}"
        if r.status == "failed" and r.log:
            line += f"  (log: {r.log})"
        lines.append(line.rstrip())
    counts = {s: sum(r.status == s for r in rows) for s in ORDER}
    lines.append("totals: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" ({len(rows)} jobs)")
    return "\n".join(lines)
