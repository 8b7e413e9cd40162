"""GPU benchmark, ready before a GPU is: DeBERTa-v3-base-sized training and measurement.

Needs no hub: the model is DeBERTa-v3-base's architecture (12 layers, 12 heads, hidden 768,
128k vocabulary, relative attention) initialised at random from a config built here; the data
are the bundled SST-2 files, tokenised with the embedded tokenizer. Through the library's own
steps (`headplast train`, `headplast measure`) it reports as JSON:
- training examples/s, FFT and LoRA r8, bf16 autocast (8,000 examples, 1 epoch, batch 32);
- the full measurement of each run on 1,024 examples (importance pre and post, gradient/
  Fisher, update, update effect, geometry), seconds per measurement;
- peak GPU memory of each phase;
- the naive reference (one forward pass per head) on a slice, next to the engine on it.
Random weights make the accuracies meaningless; the times are those of the real model.

    python bench/bench_gpu.py                     # one GPU; under 8 minutes on an H100-class GPU
    python bench/bench_gpu.py --device cpu --tiny # a 2-layer model, 64 examples: checks the script

Without a GPU (and without --device cpu) it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEBERTA_V3_BASE = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0,
                       relative_attention=True, position_buckets=256, max_relative_positions=-1, norm_rel_ebd="layer_norm",
                       share_att_key=True, pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7, position_biased_input=False)
TINY = dict(DEBERTA_V3_BASE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            position_buckets=16)
SIZES = {"full": dict(train=8000, eval=1024, naive=64), "tiny": dict(train=64, eval=16, naive=8)}


def build_model(dest: Path, tiny: bool) -> dict:
    """A random DeBERTa-v3-base-sized classifier (seeded) and the embedded tokenizer in `dest`."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from headplast.arch.loading import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(None))
    cfg = DebertaV2Config(**(TINY if tiny else DEBERTA_V3_BASE), num_labels=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(cfg)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return {"parameters": sum(p.numel() for p in model.parameters()), "layers": cfg.num_hidden_layers,
            "heads": cfg.num_attention_heads, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size}


class Peak:
    """Peak GPU memory (MiB) between start() and read(); None on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def start(self) -> None:
        if self.cuda:
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> float | None:
        if not self.cuda:
            return None
        import torch
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)


def train(model_dir: Path, root: Path, method: str, n: dict, peak: Peak) -> dict:
    from headplast.steps.train_step import run_train
    from headplast.train.config import TrainConfig

    cfg = TrainConfig(task="SST-2", method=method, model=str(model_dir), output_root=str(root), num_epochs=1,
                      max_train_samples=n["train"], eval_source="holdout", eval_size=n["eval"],
                      train_dtype="bfloat16", max_length=128)
    peak.start()
    run = run_train(cfg).path
    rc = json.loads((run / "run_config.json").read_text())
    secs = rc["seconds"]["train"]
    examples = rc["data"]["train_size"] * rc["config"]["num_epochs"]
    return {"run": str(run), "train_seconds": round(secs, 2), "examples_per_s": round(examples / secs, 1),
            "train_steps": rc["train_steps"], "peak_gpu_mib": peak.read(),
            "theta0_seconds": round(rc["theta0"]["seconds"], 2), "trainable": rc["trainable"]["trainable"],
            "train_dtype": rc["config"]["train_dtype"]}


def measure(run: str, device: str, peak: Peak) -> dict:
    """Every measurement of the run, fp32; on a GPU with 64k tokens per ablation pass (the default
    4096 was tuned for 2 CPU cores; a GPU needs bigger blocks to fill up)."""
    from headplast.measure.config import MeasureConfig
    from headplast.steps.measure_step import run_measure

    cfg = MeasureConfig(device=device, progress=False, **({"max_tokens": 1 << 16} if device == "cuda" else {}))
    peak.start()
    t = time.perf_counter()
    out = run_measure(run, cfg)
    return {"seconds": dict(out.timings), "total_seconds": round(time.perf_counter() - t, 2),
            "peak_gpu_mib": peak.read(), "max_tokens": cfg.max_tokens, "dtype": cfg.dtype}


def naive_vs_engine(run: str, n: int, device: str, peak: Peak) -> dict:
    """Importance at theta0 on the first n eval examples: the naive reference vs the engine."""
    import numpy as np

    from headplast.arch import get_adapter
    from headplast.data.tokenize import Encoded
    from headplast.measure.ablation import ablation_importance
    from headplast.measure.config import MeasureConfig
    from headplast.measure.naive import naive_importance
    from headplast.steps.measure_step import MeasureContext

    ctx = MeasureContext(Path(run), MeasureConfig(device=device, progress=False))
    enc = Encoded(ctx.enc.features[:n], ctx.enc.labels[:n])
    model = ctx.model("theta0")
    ad = get_adapter(model)
    out, importance = {"examples": n}, {}
    for name, fn in (("naive", lambda: naive_importance(model, ad, enc, ctx.task, ctx.pad_id, batch_size=32)),
                     ("engine", lambda: ablation_importance(model, ad, enc, ctx.task, ctx.pad_id, progress=False))):
        peak.start()
        t = time.perf_counter()
        res = fn()
        out[name] = {"seconds": round(time.perf_counter() - t, 2), "peak_gpu_mib": peak.read()}
        importance[name] = res.importance
    out["speedup"] = round(out["naive"]["seconds"] / out["engine"]["seconds"], 2)
    out["max_abs_diff"] = float(np.abs(importance["naive"] - importance["engine"]).max())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="2-layer model, 64 training examples (checks the script)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu.json"))
    p.add_argument("--root", default=None, help="where the runs go (default: a temporary folder)")
    a = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: training and measurement both on the CPU
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no GPU is visible (torch.cuda.is_available() is False), so there is nothing to "
              "measure; run it on a machine with a GPU, or `python bench/bench_gpu.py --device cpu --tiny` "
              "to check the script here", file=sys.stderr)
        return 2
    size = SIZES["tiny" if a.tiny else "full"]
    cuda, t0 = a.device == "cuda", time.time()
    peak = Peak(cuda)
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "tiny": a.tiny, "sizes": size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root or tmp)
        report["model"] = build_model(root / "model", a.tiny)
        for method in ("fft", "lora"):
            tr = train(root / "model", root / "runs", method, size, peak)
            report[method] = {"train": tr, "measure": measure(tr["run"], a.device, peak)}
            print(f"{method}: {tr['examples_per_s']} training examples/s, measurement "
                  f"{report[method]['measure']['total_seconds']} s", flush=True)
        report["naive_vs_engine"] = naive_vs_engine(report["fft"]["train"]["run"], size["naive"], a.device, peak)
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report["seconds"] = round(time.time() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
