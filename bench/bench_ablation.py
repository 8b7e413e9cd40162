"""Benchmark: fast exact ablation engine vs the naive reference, same machine, same run.

The naive reference is the original guide's way: one full forward pass per head, batches
of 128 padded to 256 tokens. Reports the speed ratio, the largest absolute difference
between the two importance vectors, peak memory of each (separate processes), and the
engine's achieved FLOP/s next to a measured matmul peak, and the cost of the update effect (both
directions, on the same engine) next to the ablation's.

    python bench/bench_ablation.py                      # default model, RTE validation (277)
    python bench/bench_ablation.py --eval-size 64 --model DIR
    python bench/bench_ablation.py --without-naive       # engine vs update effect only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _setup(a):
    from headplast.arch import get_adapter
    from headplast.arch.loading import load_model, load_tokenizer, resolve_model
    from headplast.data import get_task, load_split
    from headplast.data.tokenize import encode
    from headplast.data.subset import draw_indices

    path = resolve_model(a.model)
    task = get_task(a.task)
    val = load_split(task, "validation", a.data_dir)
    ex = val.subset(draw_indices(len(val), a.eval_size))
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    model = load_model(path, num_labels=task.num_labels).eval()
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    return model, get_adapter(model), encode(tok, ex, 256), task, tok.pad_token_id, dev


def _peak_mem(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)


def run_one(a) -> dict:
    from headplast.measure.ablation import ablation_importance
    from headplast.measure.naive import naive_importance

    model, ad, enc, task, pad, dev = _setup(a)
    if a.only == "effect":
        return run_effect(model, ad, enc, task, pad, dev, a)
    t = time.perf_counter()
    if a.only == "engine":
        res = ablation_importance(model, ad, enc, task, pad, batch_size=a.batch_size, progress=False)
    else:
        res = naive_importance(model, ad, enc, task, pad, batch_size=128, pad_to=256, progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    out = {"seconds": secs, "peak_mem_mib": _peak_mem(dev), "importance": res.importance.ravel().tolist(),
           "n_examples": len(enc), "mean_tokens": float(enc.lengths().mean())}
    if a.only == "engine" and a.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        n = a.flop_examples or len(enc)  # counting on a prefix would misstate a length-sorted workload
        sub = type(enc)(enc.features[:n], enc.labels[:n])
        with FlopCounterMode(display=False) as fc:
            ablation_importance(model, ad, sub, task, pad, batch_size=a.batch_size, progress=False)
        out["flops_per_example"] = fc.get_total_flops() / len(sub)
    return out


def run_effect(model, ad, enc, task, pad, dev, a) -> dict:
    """The update effect (both directions) with theta1 = theta0 plus noise: its cost does not depend
    on the values, only on the model and the examples."""
    import copy

    from headplast.measure.effect import update_effect

    g = torch.Generator().manual_seed(0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g).to(p.device))
    t = time.perf_counter()
    update_effect(model, other, ad, enc, task, pad, batch_size=a.batch_size, progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t, "peak_mem_mib": _peak_mem(dev)}


def matmul_peak(dev, n=3072, reps=5, trials=3) -> float:
    """Best of a few timed fp32 matmuls: the FLOP/s this machine can reach."""
    x, y = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    x @ y
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            x @ y
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t))
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--task", default="RTE")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--eval-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--only", choices=["engine", "naive", "effect"], default=None)
    p.add_argument("--count-flops", action="store_true")
    p.add_argument("--flop-examples", type=int, default=0, help="examples to count FLOPs on (0: all)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--without-naive", action="store_true",
                   help="only the engine and the update effect (the naive loop takes ~8x as long)")
    a = p.parse_args()
    if a.only:
        print(json.dumps(run_one(a)))
        return
    res = {}
    for which in ("engine", "effect") if a.without_naive else ("engine", "naive", "effect"):
        # separate processes: honest peak memory for each
        cmd = [sys.executable, __file__, "--only", which, "--task", a.task, "--eval-size", str(a.eval_size),
               "--batch-size", str(a.batch_size)] + (["--model", a.model] if a.model else []) + \
              (["--data-dir", a.data_dir] if a.data_dir else []) + (["--device", a.device] if a.device else []) + \
              (["--count-flops"] if which == "engine" and not a.without_naive else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if r.returncode:
            sys.exit(r.stderr)
        res[which] = json.loads(r.stdout.strip().splitlines()[-1])
    e = res["engine"]
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = {
        "model": a.model or "default (all-MiniLM-L6-v2)", "task": a.task, "examples": e["n_examples"],
        "mean_tokens": round(e["mean_tokens"], 1), "device": str(dev), "torch_threads": torch.get_num_threads(),
        "engine_seconds": round(e["seconds"], 2), "engine_peak_mem_mib": round(e["peak_mem_mib"], 1)}
    if not a.without_naive:
        n, peak = res["naive"], matmul_peak(dev)
        achieved = e["flops_per_example"] * e["n_examples"] / e["seconds"]
        report.update({
            "naive_seconds": round(n["seconds"], 2), "speedup": round(n["seconds"] / e["seconds"], 2),
            "max_abs_diff_importance": float(np.max(np.abs(np.array(e["importance"]) - np.array(n["importance"])))),
            "naive_peak_mem_mib": round(n["peak_mem_mib"], 1),
            "engine_gflops_per_s": round(achieved / 1e9, 2), "matmul_peak_gflops_per_s": round(peak / 1e9, 2),
            "engine_fraction_of_peak": round(achieved / peak, 3)})
    report.update({
        # the update effect: two patched passes (forward on theta0, reverse on theta1) on the same engine
        "update_effect_seconds": round(res["effect"]["seconds"], 2),
        "update_effect_vs_engine": round(res["effect"]["seconds"] / e["seconds"], 2),
        "update_effect_peak_mem_mib": round(res["effect"]["peak_mem_mib"], 1),
    })
    for k, v in report.items():
        print(f"{k:28s} {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
