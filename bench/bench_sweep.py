"""Benchmark: one sweep under each engine, wall time and whether the results are identical.

A tiny random RoBERTa (tests/tiny.py), SST-2, by default 2 seeds x (FFT + LoRA r4 + LoRA r8) = 6
run jobs and one cross-run job (compare, ranks, aggregate), each engine in a fresh process on a
fresh output root, 1 CPU per job. The local engine is the baseline; Ray starts a local instance;
SLURM needs a running cluster (e.g. `deploy/slurm/local-cluster.sh start`) and is left out, with
the reason, otherwise.

    python bench/bench_sweep.py                    # all three engines
    python bench/bench_sweep.py --engines local ray --seeds 1 2 3 --ranks 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--max-train-samples", "48", "--num-epochs", "1", "--train-batch-size", "8", "--eval-size", "24",
         "--max-length", "48", "--learning-rate", "3e-3", "--probe-epochs", "20", "--n-boot", "300", "--n-perm", "200"]


def results(root: Path) -> dict:
    """Measurement, table and statistics files under a root, paths and timings left out."""
    sys.path.insert(0, str(REPO / "tests"))
    from outputs import results as of

    return of(root)


def run(engine: str, model: Path, root: Path, seeds: list[str], ranks: list[str]) -> dict:
    cmd = [sys.executable, "-m", "headplast", "sweep", "--engine", engine, "--model", str(model), "--ranks", *ranks,
           "--seeds", *seeds, *SMALL, "--cpus-per-job", "1", "--output-root", str(root)]
    if engine == "slurm":
        cmd.append("--wait")
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    secs = time.time() - t
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
    return {"engine": engine, "seconds": round(secs, 1), "rc": r.returncode,
            "totals": next((ln for ln in r.stdout.splitlines() if ln.startswith("totals:")), "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=["local", "ray", "slurm"])
    ap.add_argument("--seeds", nargs="+", default=["1", "2"])
    ap.add_argument("--ranks", nargs="+", default=["4", "8"])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sweep.json"))
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from tiny import tiny_model_dir

    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    model = tiny_model_dir("roberta", work / "tiny", init=0.3)
    rows, ref = [], None
    for engine in a.engines:
        if engine == "slurm" and subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
            rows.append({"engine": engine, "skipped": "no SLURM (start one: deploy/slurm/local-cluster.sh start)"})
            continue
        root = work / engine
        row = run(engine, model, root, a.seeds, a.ranks)
        res = results(root)
        ref = res if ref is None else ref
        row["files_compared"] = len(ref)
        row["identical_to_first"] = res == ref
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(a.out).write_text(json.dumps({"seeds": a.seeds, "ranks": a.ranks, "rows": rows}, indent=1))
    print(f"\n| engine | wall s | jobs | identical to {a.engines[0]} |\n|---|---:|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['engine']} | - | skipped: {r['skipped']} | |")
        else:
            print(f"| {r['engine']} | {r['seconds']} | {r['totals']} | {r['identical_to_first']} "
                  f"({r['files_compared']} files) |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
