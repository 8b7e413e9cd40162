"""Benchmark: the measurements on a decoder of released size, on this machine (CPU or GPU).

A Qwen2.5-0.5B-shaped model (24 layers, 14 query heads, 2 K/V heads, head_dim 64, hidden 896,
494 M parameters; random weights from the config, no hub) and theta1 = theta0 plus a small
random update of every Q/K/V/O. Each measurement runs in its own process (peak memory is that
process's), on a few examples of random tokens (lengths 16 to 24): the time per head and example is
what scales. The baseline in the same run is the naive loop (one full forward pass per head, the
original guide's way) on the first `--naive-heads` heads, per head and example.

    python bench/bench_decoder_scale.py --out bench/results/decoder_scale_cpu.json
    python bench/bench_decoder_scale.py --dtype bfloat16     # weights in bf16 (not the exact default)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHAPE = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, vocab_size=151936, max_position_embeddings=512, tie_word_embeddings=True,
             num_labels=2, pad_token_id=151643)
# importance_full_last: the baseline for the read-token last layer, the same engine running that layer in full
MEASURES = ("importance", "importance_full_last", "naive", "gradfisher", "weights", "effect")


def _peak_mib(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(path: Path, seed: int = 0) -> None:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(seed)
    m0 = Qwen2ForSequenceClassification(Qwen2Config(**SHAPE)).eval()
    m0.save_pretrained(path / "theta0")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in m0.named_parameters():
            if any(k in n for k in ("q_proj", "k_proj", "v_proj", "o_proj")) and n.endswith("weight"):
                p.add_(1e-3 * torch.randn(p.shape, generator=g))
    m0.save_pretrained(path / "theta1")


def examples(n: int, seed: int = 0):
    from headplast.data.tokenize import Encoded

    rng = np.random.default_rng(seed)
    feats = []
    for _ in range(n):
        t = int(rng.integers(16, 25))
        feats.append({"input_ids": rng.integers(0, 151000, t).tolist(), "attention_mask": [1] * t})
    return Encoded(feats, rng.integers(0, 2, n))


def run_one(a) -> dict:
    from transformers import AutoModelForSequenceClassification

    from headplast.arch import get_adapter
    from headplast.data import get_task

    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, a.dtype)

    def load(which):
        return AutoModelForSequenceClassification.from_pretrained(Path(a.dir) / which, dtype=dtype).eval().to(dev)
    m0 = load("theta0")
    ad, task, enc, pad = get_adapter(m0), get_task("SST-2"), examples(a.n), SHAPE["pad_token_id"]
    L, H = ad.num_layers(m0.config), ad.num_heads(m0.config)
    t = time.perf_counter()
    out: dict = {"measure": a.only, "examples": a.n, "tokens": int(enc.lengths().sum()), "dtype": a.dtype}
    if a.only == "importance":
        from headplast.measure.ablation import ablation_importance
        res = ablation_importance(m0, ad, enc, task, pad, batch_size=a.n, progress=False)
        out["head_examples"] = L * H * a.n
        out["importance_sum"] = float(np.abs(res.importance).sum())
        np.save(Path(a.dir) / f"importance_{a.dtype}.npy", res.importance)
        ref = Path(a.dir) / "importance_float32.npy"
        if a.dtype != "float32" and ref.exists():  # the agreement of bf16 weights with fp32
            from scipy.stats import spearmanr
            b = np.load(ref)
            out["rel_diff_vs_fp32"] = float(np.abs(res.importance - b).max() / np.abs(b).max())
            out["spearman_vs_fp32"] = float(spearmanr(res.importance.ravel(), b.ravel())[0])
    elif a.only == "importance_full_last":
        import dataclasses

        from headplast.measure import fastpath
        from headplast.measure.ablation import ablation_importance
        fastpath.FAST_PATHS[ad.model_type] = dataclasses.replace(fastpath.FAST_PATHS[ad.model_type], read_context=None)
        res = ablation_importance(m0, ad, enc, task, pad, batch_size=a.n, progress=False)
        out["head_examples"] = L * H * a.n
        ref = Path(a.dir) / f"importance_{a.dtype}.npy"
        if ref.exists():  # the same numbers as the read-token path
            b = np.load(ref)
            out["rel_diff_vs_read_token"] = float(np.abs(res.importance - b).max() / np.abs(b).max())
    elif a.only == "naive":
        from headplast.data.tokenize import sorted_batches
        from headplast.measure.ablation import example_losses
        from headplast.measure.gating import head_gates
        (_, batch), = list(sorted_batches(enc, a.n, pad))
        labels = batch.pop("labels").to(dev)
        batch = {k: v.to(dev) for k, v in batch.items()}
        heads = [(l, h) for l in range(L) for h in range(H)][:a.naive_heads]
        with torch.no_grad():
            for l, h in heads:
                gates = torch.ones(L, H, device=dev)
                gates[l, h] = 0
                with head_gates(m0, ad, gates):
                    example_losses(m0(**batch, use_cache=False).logits, labels, False)
        out["head_examples"] = len(heads) * a.n
    elif a.only == "gradfisher":
        from headplast.measure.gradfisher import grad_fisher
        grad_fisher(m0, ad, enc, task, pad, batch_size=a.n, progress=False)
        out["head_examples"] = L * H * a.n
    elif a.only == "weights":  # update, geometry, circuits: weights only, fp32 on the CPU
        from headplast.measure.circuit import circuit_updates, qkvo_biases
        from headplast.measure.geometry import update_geometry
        from headplast.measure.update import qkvo_weights, update_magnitude
        m0 = m0.float().cpu()
        m1 = load("theta1").float().cpu()
        w0, w1 = qkvo_weights(m0, ad), qkvo_weights(m1, ad)
        t1 = time.perf_counter()
        update_magnitude(w0, w1, ad, m0.config)
        out["update_s"] = round(time.perf_counter() - t1, 2)
        t1 = time.perf_counter()
        update_geometry(w0, w1, ad, m0.config)
        out["geometry_s"] = round(time.perf_counter() - t1, 2)
        t1 = time.perf_counter()
        circuit_updates(w0, w1, qkvo_biases(m0, ad), qkvo_biases(m1, ad), ad, m0.config)
        out["circuit_s"] = round(time.perf_counter() - t1, 2)
    elif a.only == "effect":
        from headplast.measure.effect import update_effect
        update_effect(m0, load("theta1"), ad, enc, task, pad, batch_size=a.n, progress=False)
        out["head_examples"] = 2 * L * H * a.n  # forward and reverse
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["seconds"] = round(time.perf_counter() - t, 2)
    out["peak_mib"] = round(_peak_mib(dev))
    if out.get("head_examples"):
        out["ms_per_head_example"] = round(1000 * out["seconds"] / out["head_examples"], 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/headplast_decoder_scale")
    p.add_argument("--n", type=int, default=4, help="examples (random tokens, 16 to 24 long)")
    p.add_argument("--naive-heads", type=int, default=14, help="heads the naive baseline removes")
    p.add_argument("--measures", default=",".join(MEASURES))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device")
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.add_argument("--out")
    a = p.parse_args()
    if a.only:
        print(json.dumps(run_one(a)))
        return 0
    d = Path(a.dir)
    if not (d / "theta1" / "config.json").exists():
        t = time.perf_counter()
        build(d)
        print(f"built the 0.5B-shaped theta0/theta1 in {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for m in a.measures.split(","):
        cmd = [sys.executable, __file__, "--only", m, "--dir", a.dir, "--n", str(a.n), "--dtype", a.dtype,
               "--naive-heads", str(a.naive_heads), *(["--device", a.device] if a.device else [])]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    by = {r["measure"]: r for r in rows}
    from transformers import Qwen2Config, Qwen2ForSequenceClassification
    with torch.device("meta"):  # counted without allocating
        n_params = sum(p.numel() for p in Qwen2ForSequenceClassification(Qwen2Config(**SHAPE)).parameters())
    summary = {"shape": SHAPE, "parameters_M": round(n_params / 1e6, 1), "torch_threads": torch.get_num_threads(),
               "device": a.device or ("cuda" if torch.cuda.is_available() else "cpu"), "rows": rows}
    if "importance" in by and "naive" in by:
        summary["engine_speedup_vs_naive"] = round(by["naive"]["ms_per_head_example"]
                                                   / by["importance"]["ms_per_head_example"], 2)
        print(f"engine vs naive loop: {summary['engine_speedup_vs_naive']}x per head and example")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
