"""Benchmark: training throughput of the default configuration vs the plain Trainer one.

For each seed and method (FFT, LoRA), trains the default experiment twice on the same data
and steps, each run its own `headplast train` process (so each peak RSS is its own):
- plain Trainer: what headplast trained with before (fp32, torch's dropout masks, glibc's
  default allocator, the whole last layer, Trainer's walks over the model at every step;
  batches of similar length, as before);
- default: today's defaults (bf16 autocast where the CPU has native bf16, numpy dropout
  masks, allocator keeping freed memory, the last layer past attention on token 0 only, the
  model's parameters listed and its mode switched once;
  headplast/train/speed.py).
Both share one theta0 (built once). Reports examples/s, training seconds, peak RSS and the
final validation metric per run; then, on the default FFT run, how importance measured in
bfloat16 agrees with float32 (Spearman over heads, largest absolute difference, time).

    python bench/bench_train.py --quick          # 640 training examples, 1 seed: under 3 minutes
    python bench/bench_train.py --seeds 1 2 3    # the README's table (default experiment, SST-2)

Writes bench/results/train.md and train.json (--quick: train_quick.*).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import mean_sd, run_headplast  # bench/ is the script's folder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {"plain Trainer": ["--train-dtype", "float32", "--dropout-masks", "torch", "--no-tune-allocator",
                             "--no-last-layer-token0", "--no-lean-steps", "--no-fused-clip", "--no-embedding-rows",
                             "--no-frozen-bf16"],
           "default": []}
METHODS = {"fft": "FFT", "lora": "LoRA"}


def train_run(root: Path, method: str, seed: int, flags: list[str], extra: list[str]) -> dict:
    """One `headplast train` process: its run_config.json figures and its peak RSS."""
    args = ["train", "--method", method, "--seed", str(seed), "--output-root", str(root), *flags, *extra]
    child = run_headplast(args)
    if child.exit_code:
        sys.exit(f"{' '.join(args)} failed:\n{child.stderr}")
    run = next(root.glob(f"{METHODS[method]}/*/seed{seed}" + ("_r*" if method == "lora" else "")))
    rc = json.loads((run / "run_config.json").read_text())
    examples = rc["data"]["train_size"] * rc["config"]["num_epochs"]
    return {"seed": seed, "method": method, "run": str(run), "train_seconds": rc["seconds"]["train"],
            "examples_per_s": examples / rc["seconds"]["train"], "train_steps": rc["train_steps"],
            "peak_rss_mib": child.peak_rss_mib, "metric_name": rc["validation"]["theta1"]["metric_name"],
            "metric": rc["validation"]["theta1"]["metric"], "train_loss": rc["train_loss"],
            **rc["speed"], "device": rc["device"]["device"]}  # every speed setting as resolved and recorded


def dtype_agreement(run: str, n: int) -> dict:
    """Importance after fine-tuning on the first n eval examples in float32 and bfloat16."""
    import numpy as np
    from scipy.stats import spearmanr

    from headplast.data.tokenize import Encoded
    from headplast.measure.config import MeasureConfig
    from headplast.measure.registry import get
    from headplast.steps.measure_step import MeasureContext

    out = {}
    for dtype in ("float32", "bfloat16"):
        ctx = MeasureContext(Path(run), MeasureConfig(dtype=dtype, progress=False))
        ctx.enc = Encoded(ctx.enc.features[:n], ctx.enc.labels[:n])
        t = time.perf_counter()
        out[dtype] = (get("importance_post").compute(ctx).importance, time.perf_counter() - t)
    (a, ta), (b, tb) = out["float32"], out["bfloat16"]
    return {"examples": n, "heads": int(a.size), "spearman": float(spearmanr(a.ravel(), b.ravel())[0]),
            "max_abs_diff": float(np.abs(a - b).max()), "max_abs_importance": float(np.abs(a).max()),
            "seconds_float32": ta, "seconds_bfloat16": tb}


def table(rows: list[dict]) -> tuple[list[str], dict]:
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| method | configuration | examples/s | train s | peak RSS MiB | validation "
             + rows[0]["metric_name"] + " (" + ", ".join(f"seed {s}" for s in seeds) + ") | mean ± sd |",
             "|---|---|---:|---:|---:|---|---:|"]
    speedup = {}
    for m, label in METHODS.items():
        got = {c: [r for r in rows if r["method"] == m and r["config"] == c] for c in CONFIGS}
        if not all(got.values()):
            continue
        for c, rs in got.items():
            lines.append(f"| {label} | {c} | {mean_sd([r['examples_per_s'] for r in rs], '{:.1f}')} | "
                         f"{mean_sd([r['train_seconds'] for r in rs], '{:.1f}')} | "
                         f"{max(r['peak_rss_mib'] for r in rs):.0f} | "
                         + ", ".join(f"{r['metric']:.4f}" for r in rs)
                         + f" | {mean_sd([r['metric'] for r in rs], '{:.4f}')} |")
        speedup[label] = statistics.mean(r["examples_per_s"] for r in got["default"]) / \
            statistics.mean(r["examples_per_s"] for r in got["plain Trainer"])
    return lines, speedup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--quick", action="store_true", help="640 training examples (under 3 minutes)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further flags for headplast train")
    p.add_argument("--measure-examples", type=int, default=None,
                   help="eval examples of the float32 vs bfloat16 importance check (default 512; --quick 96; 0: skip)")
    p.add_argument("--root", default=None, help="where the runs go (default: a temporary folder, removed)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = p.parse_args()
    extra = (["--max-train-samples", "640"] if a.quick else []) + a.extra
    n_measure = a.measure_examples if a.measure_examples is not None else (96 if a.quick else 512)
    root = Path(a.root or tempfile.mkdtemp(prefix="headplast-bench-train-"))
    t0, rows = time.time(), []
    for seed in a.seeds:
        for m in a.methods:
            for c, flags in CONFIGS.items():
                d = root / c.replace(" ", "_")
                if c != "plain Trainer" and (root / "plain_Trainer" / "_shared").exists():  # same theta0
                    shutil.copytree(root / "plain_Trainer" / "_shared", d / "_shared", dirs_exist_ok=True)
                rows.append({"config": c, **train_run(d, m, seed, flags, extra)})
                r = rows[-1]
                print(f"seed {seed} {METHODS[m]:4s} {c:13s}: {r['examples_per_s']:6.1f} examples/s, "
                      f"{r['train_seconds']:6.1f} s, peak RSS {r['peak_rss_mib']:5.0f} MiB, "
                      f"{r['metric_name']} {r['metric']:.4f}", flush=True)
    lines, speedup = table(rows)
    agree = None
    fft_default = [r for r in rows if r["method"] == "fft" and r["config"] == "default"]
    if n_measure and fft_default:
        agree = dtype_agreement(fft_default[0]["run"], n_measure)
        lines += ["", f"Importance after fine-tuning (FFT, seed {fft_default[0]['seed']}, first {n_measure} eval "
                  f"examples, {agree['heads']} heads), --dtype bfloat16 vs float32: Spearman "
                  f"{agree['spearman']:.4f}, largest absolute difference {agree['max_abs_diff']:.2e} nats "
                  f"(largest |importance| {agree['max_abs_importance']:.2e}); {agree['seconds_float32']:.1f} s "
                  f"in float32, {agree['seconds_bfloat16']:.1f} s in bfloat16."]
    print("\n".join([""] + lines))
    name = "train_quick" if a.quick else "train"
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"{name}.md").write_text("\n".join(lines) + "\n")
    (Path(a.out) / f"{name}.json").write_text(json.dumps(
        {"runs": rows, "speedup": speedup, "dtype_agreement": agree, "extra_flags": extra,
         "seconds": time.time() - t0}, indent=2))
    if not a.root:
        shutil.rmtree(root, ignore_errors=True)
    print("train speed-up vs plain Trainer: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))


if __name__ == "__main__":
    main()
