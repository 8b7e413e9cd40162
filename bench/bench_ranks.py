"""Benchmark: LoRA with uniform ranks vs ranks guided by the heads' importance or update.

For each seed, trains LoRA on the default experiment three times with the same number of
trainable LoRA parameters: uniform rank r, ranks guided by I_pre (importance at theta0) and
by U (where full fine-tuning's update goes), both taken from the FFT run of that seed. Reports
per run and over seeds: validation metric, trainable LoRA parameters, training time, the
spread of the ranks; and guided minus uniform per seed.

    python bench/bench_ranks.py --source-root outputs   # after the main job (its FFT runs)
    python bench/bench_ranks.py --seeds 1 2 3           # trains and measures the FFT sources too

Writes bench/results/ranks.md and ranks.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import mean_sd  # noqa: E402  (bench/ is the script's folder)

from headplast.errors import HeadplastError  # noqa: E402
from headplast.measure.config import MeasureConfig  # noqa: E402
from headplast.steps.runs import measurement_arrays  # noqa: E402
from headplast.steps.measure_step import run_measure  # noqa: E402
from headplast.steps.train_step import run_train  # noqa: E402
from headplast.train.config import TrainConfig  # noqa: E402

GUIDES = ("uniform", "I_pre", "U")


def source_run(root: str, seed: int) -> Path:
    """The FFT run of the default experiment for `seed`, trained and measured if it is not yet
    (an existing run measured before the update effect existed is used as it is: only its I_pre
    and U are read)."""
    d = run_train(TrainConfig(method="fft", seed=seed, output_root=root)).path
    try:
        for m in ("importance_pre", "update"):
            measurement_arrays(d, m)
    except HeadplastError:
        run_measure(d, MeasureConfig(progress=False))
    return d


def lora_run(root: str, seed: int, by: str, src: Path) -> dict:
    out = run_train(TrainConfig(method="lora", seed=seed, output_root=root, rank_by=by,
                                rank_from=None if by == "uniform" else str(src)))
    rc = json.loads((out.path / "run_config.json").read_text())
    ranks = list(rc.get("rank_pattern", {}).get("ranks", {}).values()) or [rc["config"]["lora_r"]]
    return {"seed": seed, "by": by, "dir": str(out.path), "trained_now": out.status == "ran",
            "metric_name": rc["validation"]["theta1"]["metric_name"], "metric": rc["validation"]["theta1"]["metric"],
            "theta0_metric": rc["validation"]["theta0"]["metric"],
            "lora_params": rc["trainable"]["groups"]["lora"]["trainable"], "trainable": rc["trainable"]["trainable"],
            "train_seconds": rc["seconds"]["train"], "rank_min": min(ranks), "rank_max": max(ranks),
            "ranks": rc.get("rank_pattern", {}).get("ranks")}


def table(rows: list[dict]) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["seed"], r["by"]): r for r in rows}
    out = ["| ranks | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | guided − uniform (mean ± sd) | "
           "LoRA params | ranks min–max | train s (mean) |", "|---|" + "---:|" * (len(seeds) + 5)]
    for g in GUIDES:
        got = [by[(s, g)] for s in seeds if (s, g) in by]
        if not got:
            continue
        vals = [r["metric"] for r in got]
        diff = [r["metric"] - by[(r["seed"], "uniform")]["metric"] for r in got if (r["seed"], "uniform") in by]
        out.append(f"| {g} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {mean_sd(vals)} | "
                   + ("—" if g == "uniform" else mean_sd(diff)) + f" | {got[0]['lora_params']:,} | "
                   f"{min(r['rank_min'] for r in got)}–{max(r['rank_max'] for r in got)} | "
                   f"{statistics.mean(r['train_seconds'] for r in got):.1f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--source-root", default="bench_ranks_out", help="output root holding (or getting) the FFT "
                    "runs whose I_pre and U guide the ranks, e.g. the main job's outputs/")
    ap.add_argument("--root", default="bench_ranks_out", help="output root of the LoRA runs")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ranks"))
    a = ap.parse_args(argv)
    rows = []
    for seed in a.seeds:
        src = source_run(a.source_root, seed)
        for g in GUIDES:
            rows.append(lora_run(a.root, seed, g, src))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "ranks"}), flush=True)
    name = rows[0]["metric_name"]
    text = "\n".join([f"# LoRA ranks guided by head scores vs uniform (default experiment, seeds "
                      f"{' '.join(map(str, a.seeds))}): validation {name}", "", *table(rows), ""])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
