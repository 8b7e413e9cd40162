"""Benchmark of the main job: wall time and peak memory of every step of the pipeline.

Each step runs as its own `headplast` process (the same commands the guide's scripts
run), so each step's peak resident memory is its own.

    python bench/bench_pipeline.py                         # default: MiniLM-L6, RTE, FFT + LoRA r8
    python bench/bench_pipeline.py --extra "--model DIR --max-train-samples 64" --ranks 4 8
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile

from benchlib import run_headplast  # bench/ is the script's folder


def steps(a, root):
    common = ["--output-root", root, *shlex.split(a.extra)]
    out = []
    for seed in a.seeds:
        s = ["--task", a.task, "--seed", str(seed)]
        out += [(f"train FFT seed {seed}", ["train", "--method", "fft", *s, *common]),
                (f"measure FFT seed {seed}", ["measure", "--method", "fft", *s, "--output-root", root]),
                (f"plot FFT seed {seed}", ["plot", "--method-label", "FFT", *s, "--output-root", root])]
        for r in a.ranks:
            lr = ["--lora-r", str(r)]
            out += [(f"train LoRA_r{r} seed {seed}", ["train", "--method", "lora", *s, *lr, "--lora-alpha",
                                                      str(2 * r), *common]),
                    (f"measure LoRA_r{r} seed {seed}", ["measure", "--method", "lora", *s, *lr,
                                                        "--output-root", root]),
                    (f"plot LoRA_r{r} seed {seed}", ["plot", "--method-label", f"LoRA_r{r}", *s,
                                                     "--output-root", root]),
                    (f"compare r{r} seed {seed}", ["compare", *s, *lr, "--output-root", root])]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="RTE")
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--ranks", nargs="+", type=int, default=[8])
    p.add_argument("--extra", default="", help="further flags for train, e.g. '--model DIR'")
    p.add_argument("--output-root", default=None, help="default: a fresh temporary directory")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    root = a.output_root or tempfile.mkdtemp(prefix="headplast-bench-")
    rows, total = [], 0.0
    print(f"{'step':32s} {'wall s':>8s} {'peak RSS MiB':>13s}")
    for name, args in steps(a, root):
        child = run_headplast(args)
        secs, mib = child.seconds, child.peak_rss_mib
        if child.exit_code:
            sys.exit(f"step '{name}' failed ({child.exit_code}):\n{child.stderr}")
        total += secs
        rows.append({"step": name, "seconds": round(secs, 1), "peak_rss_mib": round(mib)})
        print(f"{name:32s} {secs:8.1f} {mib:13.0f}", flush=True)
    print(f"{'total':32s} {total:8.1f} {max(r['peak_rss_mib'] for r in rows):13.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"output_root": root, "steps": rows, "total_seconds": round(total, 1)}, f, indent=2)


if __name__ == "__main__":
    main()
