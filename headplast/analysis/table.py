"""One row per head with every measured value of a run (heads.csv), read from the run's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from headplast.errors import HeadplastError
from headplast.orchestration import layout
from headplast.orchestration.io import read_json, read_jsonl


def _measure_cmd(run_dir: Path) -> str:
    return f"headplast measure {run_dir}"


def _rows(run_dir: Path, name: str, n: int | None, fields) -> list[dict]:
    path = run_dir / name
    if not path.exists():
        raise HeadplastError(f"{path} is missing (run {run_dir} has not been measured)",
                             f"run `{_measure_cmd(run_dir)}` first")
    return read_jsonl(path, n, fields, fix=f"re-run `{_measure_cmd(run_dir)} --force`")


def measured_run(root, task: str, label: str, seed: int) -> Path:
    """The directory of a trained and measured run, or an error naming the scripts that make it."""
    method, r = layout.parse_label(label)
    d = layout.run_dir(root, layout.RunId(task, method, seed, r))
    if not (d / layout.RUN_CONFIG).exists() or not (d / layout.IMPORTANCE["post"]).exists():
        train = f"run_mnli.sh {seed} {task} FFT" if method == "fft" else f"run_lora.sh {seed} {task} {r} {2 * r}"
        meas = f"measure_mnli.sh {seed} {task} FFT" if method == "fft" else f"measure_lora.sh {seed} {task} {r}"
        raise HeadplastError(f"run {label} seed {seed} ({d}) does not exist or is not measured",
                             f"bash scripts/{train} && bash scripts/{meas}")
    return d


def load_heads(run_dir: str | Path) -> pd.DataFrame:
    """DataFrame [L*H rows]: layer, head, I_pre (+ se, metric delta, KL), I_post (...), U..., gradients."""
    from headplast.orchestration.measure_step import GRADFISHER_FIELDS, IMPORTANCE_FIELDS, UPDATE_FIELDS

    d = Path(run_dir)
    if not (d / layout.RUN_CONFIG).exists():
        raise HeadplastError(f"no run at {d} (no {layout.RUN_CONFIG})",
                             "train it first with `headplast train` (see `headplast train --help`)")
    pre = _rows(d, layout.IMPORTANCE["pre"], None, IMPORTANCE_FIELDS)
    n = len(pre)
    post = _rows(d, layout.IMPORTANCE["post"], n, IMPORTANCE_FIELDS)
    gf = _rows(d, layout.GRADFISHER, n, GRADFISHER_FIELDS)
    up = _rows(d, layout.UPDATE, n, UPDATE_FIELDS)
    df = pd.DataFrame({"layer": [r["layer"] for r in pre], "head": [r["head"] for r in pre]})
    for tag, rows in (("pre", pre), ("post", post)):
        df[f"I_{tag}"] = [r["importance"] for r in rows]
        df[f"I_{tag}_se"] = [r["importance_se"] for r in rows]
        df[f"I_{tag}_metric_delta"] = [r["metric_delta"] for r in rows]
        df[f"I_{tag}_kl"] = [r["kl"] for r in rows]
    for rows, fields in ((up, UPDATE_FIELDS), (gf, GRADFISHER_FIELDS)):
        for f in fields:
            df[f] = [r[f] for r in rows]
    return df.astype({c: float for c in df.columns if c not in ("layer", "head")}).replace({None: np.nan})


def load_losses(run_dir: str | Path, which: str) -> np.ndarray | None:
    p = Path(run_dir) / layout.LOSSES[which]
    return np.load(p) if p.exists() else None


def run_info(run_dir: str | Path) -> dict:
    """What identifies a run for comparisons: label, theta0, eval subset, validation metric."""
    d = Path(run_dir)
    rc = read_json(d / layout.RUN_CONFIG, "run_config.json")
    sub = read_json(d / layout.EVAL_SUBSET, "eval_subset.json", f"run `{_measure_cmd(d)}` first")
    return {"dir": str(d), "label": rc["label"], "task": rc["run"]["task"], "seed": rc["run"]["seed"],
            "method": rc["run"]["method"], "r": rc["run"]["r"], "model": rc["config"].get("model") or "default",
            "theta0_hash": rc["theta0_hash"], "theta1_hash": rc["theta1_hash"],
            "subset_fingerprint": sub["fingerprint"], "subset_split": sub["split"], "subset_size": sub["size"],
            "val_metric_name": rc["validation"]["theta1"]["metric_name"],
            "val_metric_theta0": rc["validation"]["theta0"]["metric"],
            "val_metric": rc["validation"]["theta1"]["metric"], "collapsed": rc["collapsed"],
            "trainable_params": rc["trainable"]["trainable"]}


def check_comparable(infos: list[dict], what: str) -> None:
    """Runs compared or aggregated must share the model and the eval subset."""
    from headplast.errors import HeadplastError

    for key, name in (("model", "model"), ("subset_fingerprint", "eval subset"), ("task", "task")):
        vals = {i[key] for i in infos}
        if len(vals) > 1:
            listing = "; ".join(f"{i['dir']}: {i[key]}" for i in infos)
            raise HeadplastError(f"cannot {what} runs with different {name}s ({listing})",
                                 "re-train/re-measure them with the same --model and eval subset")
