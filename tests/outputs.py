"""What two output roots are compared on: every measurement, table and statistic, without paths
and timings (a root's own path inside a file is replaced by ROOT)."""

import json
from pathlib import Path

JSON_RESULTS = ("stats.json", "cases.json", "compare_metrics.json", "rank_metrics.json", "aggregate_metrics.json")


def _clean(o):
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items() if k not in ("dir", "run", "runs", "seconds")}
    return [_clean(v) for v in o] if isinstance(o, list) else o


def results(root: Path) -> dict:
    out = {}
    for f in sorted(root.rglob("*")):
        rel = str(f.relative_to(root))
        if rel.startswith(("_shared", "_sweep")) or "/." in "/" + rel or not f.is_file():
            continue
        if f.suffix in (".jsonl", ".npy", ".csv"):
            out[rel] = f.read_bytes().replace(str(root).encode(), b"ROOT")
        elif f.name in JSON_RESULTS:
            out[rel] = _clean(json.loads(f.read_text()))
    return out
