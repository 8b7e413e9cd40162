"""Choose the default experiment's learning rates on data the measurements never use.

The train split is cut three ways, all disjoint: the measurement holdout (what
`--eval-source holdout` measures importance on), the training subset (what the run trains
on), and a *tuning* set drawn from the rest. Each learning rate trains from the same theta0
(seed 1) and is scored on the tuning set; the validation split is not looked at either.

    python bench/tune_defaults.py                      # SST-2, the default experiment's sizes
    python bench/tune_defaults.py --fft-lrs 2e-5 5e-5 --lora-lrs 1e-3 2e-3

Prints a markdown table and writes it with the raw numbers to bench/results/tune_<task>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headplast.arch.adapters import get_adapter  # noqa: E402
from headplast.arch.loading import load_model, load_tokenizer, resolve_model  # noqa: E402
from headplast.data.metrics import majority_baseline  # noqa: E402
from headplast.data.prepare import prepare_from_config  # noqa: E402
from headplast.data.overlap import TrainingText  # noqa: E402
from headplast.data.subset import apart_from_training, holdout_indices, make_eval_subset  # noqa: E402
from headplast.train.config import TrainConfig  # noqa: E402
from headplast.train.evaluate import evaluate  # noqa: E402
from headplast.train.fit import fine_tune, trainable_model  # noqa: E402
from headplast.train.recipes import resolve  # noqa: E402
from headplast.train.theta0 import build_theta0  # noqa: E402

TUNING_SEED = 7


def tuning_examples(data, eval_source: str, eval_size: int, size: int):
    """Training examples that are neither trained on nor in the measurement holdout, and share no
    source text with a training example (data.overlap: SST-2's phrases of one sentence)."""
    held = holdout_indices(data.full_train, eval_size) if eval_source == "holdout" else set()
    if eval_source == "holdout":  # the holdout as measured: topped up beyond `held` where needed
        held |= set(make_eval_subset(data.task.name, "holdout", eval_size, data.full_train, data.train,
                                     data.train_indices).indices)
    used = held | set(data.train_indices)
    free = np.random.default_rng(TUNING_SEED).permutation([i for i in range(len(data.full_train)) if i not in used])
    pick = apart_from_training(data.full_train, free, size, TrainingText(data.train))
    return data.full_train.subset(np.sort(pick)), len(held)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="SST-2")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tuning-size", type=int, default=2000)
    ap.add_argument("--max-train-samples", type=int, default=None, help="default: the task's recipe")
    ap.add_argument("--eval-size", type=int, default=None, help="default: the task's recipe")
    ap.add_argument("--fft-lrs", type=float, nargs="+", default=[2e-5, 5e-5, 1e-4])
    ap.add_argument("--lora-lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 4e-3])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    base, _ = resolve(TrainConfig(task=a.task, seed=a.seed, data_dir=a.data_dir,
                                  max_train_samples=a.max_train_samples, eval_size=a.eval_size))
    data = prepare_from_config(base)
    tune, n_held = tuning_examples(data, base.eval_source, base.eval_size, a.tuning_size)
    if len(tune) < 100:
        sys.exit(f"only {len(tune)} training examples are left for tuning: pass a smaller --max-train-samples")
    model_path = resolve_model(None)
    tok = load_tokenizer(model_path)
    t = time.time()
    theta0, probe = build_theta0(model_path, data.task, tok, data.train, a.seed, "probe", base.max_length,
                                 base.probe_epochs, base.probe_lr)
    rows = [{"method": "theta0", "lr": None, "tuning_accuracy": evaluate(theta0, data.task, tok, tune)["metric"],
             "seconds": time.time() - t}]
    with_tmp = Path("/tmp") / f"tune_theta0_{a.task}_{a.seed}"
    theta0.save_pretrained(with_tmp)
    for method, lrs in (("fft", a.fft_lrs), ("lora", a.lora_lrs)):
        for lr in lrs:
            cfg = replace(base, method=method, learning_rate=lr)
            model = load_model(str(with_tmp))
            model, _ = trainable_model(model, get_adapter(model), cfg)
            t = time.time()
            fine_tune(model, tok, data.train, cfg)
            acc = evaluate(model, data.task, tok, tune)["metric"]
            rows.append({"method": method, "lr": lr, "tuning_accuracy": acc, "seconds": time.time() - t})
            print(rows[-1], flush=True)
    result = {"task": data.task.name, "seed": a.seed, "train_size": len(data.train), "tuning_size": len(tune),
              "measurement_holdout": n_held, "num_epochs": base.num_epochs,
              "majority_on_tuning": majority_baseline(data.task, data.train.labels, tune.labels), "runs": rows}
    lines = ["| method | learning rate | tuning-set accuracy | train s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['lr'] if r['lr'] else '-'} | {r['tuning_accuracy']:.4f} | {r['seconds']:.0f} |"
              for r in rows]
    print("\n".join(lines))
    out = Path(a.out or Path(__file__).parent / "results" / f"tune_{data.task.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "table": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
