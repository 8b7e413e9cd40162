"""Reading finished runs: the per-head table (heads.csv's rows) from the declared measurement
files, each checked against the record of the step that wrote it; what identifies a run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from headplast.arch import get_adapter
from headplast.errors import HeadplastError
from headplast.measure import registry
from headplast.store import layout, records
from headplast.store.io import file_sha256, nulls_as_nan, read_json, read_jsonl
from headplast.store.schema import JOINT_EXAMPLES_FILE, JOINT_LOSSES_FILE, UPDATE_EFFECT, UPDATE_JOINT


def measure_cmd(run_dir: Path, force: bool = False) -> str:
    return f"run `headplast measure {run_dir}{' --force' if force else ''}`"


def train_fix(run: layout.RunId) -> str:
    """The guide's scripts that make a run."""
    r = run.r
    if run.method == "fft":
        return (f"bash scripts/run_mnli.sh {run.seed} {run.task} FFT && "
                f"bash scripts/measure_mnli.sh {run.seed} {run.task} FFT")
    return (f"bash scripts/run_lora.sh {run.seed} {run.task} {r} {2 * r} && "
            f"bash scripts/measure_lora.sh {run.seed} {run.task} {r}")


def resolve_task(root, task: str | None) -> str:
    """The folder name of a task: a GLUE task's canonical name ('sst2' -> 'SST-2'), or the name of
    custom data that has runs under `root`. None: the one task with runs under `root` (the
    default task when there are none)."""
    from headplast.data.tasks import DEFAULT_TASK, get_task

    if task is None:
        found = sorted({p.name for kind in ("FFT", "LoRA") if (Path(root) / kind).is_dir()
                        for p in (Path(root) / kind).iterdir() if p.is_dir()})
        if len(found) > 1:
            raise HeadplastError(f"{root} holds runs of several tasks ({', '.join(found)})",
                                 "pass --task to say which one")
        task = found[0] if found else DEFAULT_TASK
    if any((Path(root) / kind / task).is_dir() for kind in ("FFT", "LoRA")):
        return task
    return get_task(task).name


def is_measured(d: Path) -> bool:
    return (d / layout.RUN_CONFIG).exists() and all(records.read_record(d, m.name) for m in registry.required())


def measured_run(root, task: str, label: str, seed: int) -> Path:
    """The directory of a trained and measured run, or an error naming the scripts that make it."""
    run = layout.RunId.from_label(task, label, seed)
    d = layout.run_dir(root, run)
    if not is_measured(d):
        raise HeadplastError(f"run {label} seed {seed} ({d}) does not exist or is not measured", train_fix(run))
    return d


def other_seeds(root, task: str, label: str, seed: int, measurement: str) -> list[int]:
    """Seeds other than `seed` with a run of `label` that has `measurement`."""
    d = layout.run_dir(root, layout.RunId.from_label(task, label, seed))
    suffix = d.name[len(f"seed{seed}"):]  # '' (FFT) or '_r8' (LoRA)
    if not d.parent.is_dir():
        return []
    found = (re.fullmatch(rf"seed(\d+){re.escape(suffix)}", p.name) for p in d.parent.iterdir())
    return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) != seed
                  and records.read_record(d.parent / m.group(0), measurement))


def _require_run(d: Path) -> None:
    if not (d / layout.RUN_CONFIG).exists():
        raise HeadplastError(f"no run at {d} (no {layout.RUN_CONFIG})",
                             "train it first with `headplast train` (see `headplast train --help`)")


def verified_measurements(run_dir: str | Path) -> dict[str, dict]:
    """{measurement: its record}, after checking every measurement file is as its step wrote it."""
    d = Path(run_dir)
    _require_run(d)
    out = {}
    for m in registry.MEASUREMENTS:
        if records.read_record(d, m.name) is None:
            if m.optional or not m.required:  # asked for by --ablation only; or added after the run was measured
                continue
            raise HeadplastError(f"{d / m.file} is missing: run {d} has not been measured ({m.name})",
                                 measure_cmd(d))
        out[m.name] = records.verify(d, m.name, measure_cmd(d, force=True))
    return out


def read_stats(run_dir: str | Path) -> dict:
    """A run's stats.json with its undefined statistics (a correlation of constant scores, a CI
    of too few examples: NaN, written as null) read back as NaN, which formats and plots as such."""
    st = read_json(Path(run_dir) / layout.STATS, "statistics", f"re-run `headplast plot {run_dir} --force`")
    return _sections_as_nan(st, ("pairs", "reliability"))


def _sections_as_nan(d: dict, sections) -> dict:
    """`d` with the nulls of its numbers-only sections read back as NaN (store.io.nulls_as_nan)."""
    return {**d, **{k: nulls_as_nan(d[k]) for k in sections if k in d}}


def read_compare(path: str | Path) -> dict:
    """A compare_metrics.json with its undefined statistics (a correlation with a constant score,
    a CI of too few values: NaN, written as null) read back as NaN, as read_stats does for a run:
    each run's statistics and counter-example counts, the key statistics and the subspace figures."""
    root = Path(path).parents[3]  # ROOT/COMPARE/<task>/seed<s>/compare_metrics.json
    m = read_json(Path(path), "comparison", f"re-run `headplast compare --output-root {root} --force`")
    m = _sections_as_nan(m, ("key_statistics", "cases"))  # cases: per run, only counts can be null
    stats = {lab: _sections_as_nan(st, ("pairs", "reliability")) for lab, st in m.get("stats", {}).items()}
    sub = _sections_as_nan(m.get("subspace", {}), ("phi", "rho_I_pre_phi", "noise_floor"))
    circ = {side: _sections_as_nan(v, ("phi", "rho_I_pre_phi", "noise_floor", "random_within_parts"))
            for side, v in m.get("circuit_subspace", {}).items()}
    return {**m, "stats": stats, **({"subspace": sub} if "subspace" in m else {}),
            **({"circuit_subspace": circ} if "circuit_subspace" in m else {})}


def read_aggregate(path: str | Path) -> dict:
    """An aggregate_metrics.json with its undefined statistics (a CI over one seed, a test over
    too few pairs: NaN, written as null) read back as NaN, as read_stats does for a run."""
    agg = read_json(Path(path), "aggregate over seeds", "re-run `headplast pipeline` (or `headplast aggregate`) "
                    "with --force")
    return _sections_as_nan(agg, ("per_method", "paired_tests"))


def load_heads(run_dir: str | Path) -> pd.DataFrame:
    """DataFrame [L*H rows]: layer, head and every declared measurement's columns (heads.csv)."""
    d = Path(run_dir)
    present = verified_measurements(d)
    df = None
    for m in (m for m in registry.MEASUREMENTS if m.name in present):
        rows = read_jsonl(d / m.file, None if df is None else len(df), m.fields, fix=measure_cmd(d, force=True))
        if df is None:
            df = pd.DataFrame({"layer": [r["layer"] for r in rows], "head": [r["head"] for r in rows]})
        for f in m.fields:
            df[m.column(f)] = [r[f] for r in rows]
    return df.astype({c: float for c in df.columns if c not in ("layer", "head")}).replace({None: np.nan})


def measurement_arrays(run_dir: str | Path, name: str) -> dict[str, np.ndarray]:
    """One measurement of a run (checked against its record) as {heads.csv column: [L, H] array}."""
    d, m = Path(run_dir), registry.get(name)
    _require_run(d)
    if records.read_record(d, m.name) is None:
        raise HeadplastError(f"{d} has no {m.name} measurement", measure_cmd(d))
    records.verify(d, m.name, measure_cmd(d, force=True))
    rows = read_jsonl(d / m.file, None, m.fields, fix=measure_cmd(d, force=True))
    L, H = max(r["layer"] for r in rows) + 1, max(r["head"] for r in rows) + 1
    out = {m.column(f): np.full((L, H), np.nan) for f in m.fields}
    for r in rows:
        for f in m.fields:
            out[m.column(f)][r["layer"], r["head"]] = np.nan if r[f] is None else r[f]
    return out


def kv_group_size(run_dir: str | Path) -> int | None:
    """Query heads per K/V head of the run's model (1 without grouped-query attention): as recorded
    in run_config.json, else (runs trained before it was) from theta0's config; None where neither
    says (theta0 deleted)."""
    d = Path(run_dir)
    rc = read_json(d / layout.RUN_CONFIG) if (d / layout.RUN_CONFIG).exists() else {}
    model = rc.get("model", {})
    if "kv_group_size" in model:
        return int(model["kv_group_size"])
    if model.get("reads", "token 0") == "token 0":  # encoders, and runs from before the decoders (no 'reads')
        return 1
    if not (d / layout.CKPT_INIT / "config.json").exists():
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(d / layout.CKPT_INIT))
    try:
        return get_adapter(config).group_size(config)
    except HeadplastError:
        return None


def load_per_example(run_dir: str | Path) -> dict[str, np.ndarray]:
    """heads.csv column -> per-example values [N, 1 + L*H] of the measurements that keep them."""
    d = Path(run_dir)
    return {c: np.load(d / f) for m in registry.MEASUREMENTS if records.read_record(d, m.name)
            for c, f in m.per_example_files.items()}


def load_halves(run_dir: str | Path) -> dict[str, np.ndarray]:
    """heads.csv column -> its values on both halves of random splits [splits, 2, L*H], of the
    measurements that keep them (Schema.halves)."""
    d = Path(run_dir)
    out = {}
    for m in registry.MEASUREMENTS:
        if m.halves and records.read_record(d, m.name):
            arr = np.load(d / m.halves)  # [fields, splits, 2, L*H]
            out.update({m.column(f): arr[i] for i, f in enumerate(m.fields)})
    return out


def load_joint(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-example losses of update_joint [N, L + 2], effect_fwd's per-example values [N, 1 + L*H])
    of a run that has both measurements (None for a run measured before update_joint existed)."""
    d = Path(run_dir)
    if not (records.read_record(d, UPDATE_JOINT.name) and records.read_record(d, UPDATE_EFFECT.name)):
        return None
    fwd = np.load(d / UPDATE_EFFECT.per_example_files["effect_fwd"])
    examples = d / JOINT_EXAMPLES_FILE  # the eval examples update_joint read (before it existed: all)
    return np.load(d / JOINT_LOSSES_FILE), fwd[np.load(examples)] if examples.exists() else fwd


def run_info(run_dir: str | Path) -> dict:
    """What identifies a run for comparisons: label, theta0, eval subset, validation metric."""
    d = Path(run_dir)
    rc = read_json(d / layout.RUN_CONFIG, "run_config.json")
    sub = read_json(d / layout.EVAL_SUBSET, "eval_subset.json", measure_cmd(d))
    return {"dir": str(d), "label": rc["label"], "task": rc["run"]["task"], "seed": rc["run"]["seed"],
            "method": rc["run"]["method"], "r": rc["run"]["r"], "model": rc["config"].get("model") or "default",
            "theta0_hash": rc["theta0_hash"], "theta1_hash": rc["theta1_hash"],
            "subset_fingerprint": sub["fingerprint"], "subset_split": sub["split"], "subset_size": sub["size"],
            "val_metric_name": rc["validation"]["theta1"]["metric_name"],
            "val_metric_theta0": rc["validation"]["theta0"]["metric"],
            "val_metric": rc["validation"]["theta1"]["metric"], "collapsed": rc["collapsed"],
            "majority": rc["validation"]["majority_baseline"],
            "trainable_params": rc["trainable"]["trainable"],
            # measured overlap of the eval examples with the training text (None: measured before it was)
            "eval_overlap": sub.get("overlap"), "eval_source": sub.get("eval_source"),
            # how it was trained (runs from before the record: the legacy value of the field)
            "train_dtype": rc.get("speed", {}).get("train_dtype") or rc["config"].get("train_dtype", "float32")}


def check_comparable(infos: list[dict], what: str) -> None:
    """Runs compared or aggregated must share the model, the eval subset and the training dtype (a
    sweep over a mixed GPU partition resolves bf16 on some nodes and fp32 on others)."""
    fixes = {"train_dtype": "re-train them with the same --train-dtype (a sweep: pass --train-dtype so every "
                            "node trains alike)"}
    for key, name in (("model", "model"), ("subset_fingerprint", "eval subset"), ("task", "task"),
                      ("train_dtype", "training dtype")):
        vals = {i.get(key) for i in infos}
        if len(vals) > 1:
            listing = "; ".join(f"{i['dir']}: {i.get(key)}" for i in infos)
            raise HeadplastError(f"cannot {what} runs with different {name}s ({listing})",
                                 fixes.get(key, "re-train/re-measure them with the same --model and eval subset"))


def input_hashes(run_dir: str | Path) -> dict[str, str]:
    """Content hashes of everything the analysis of a run reads (for the keys of analysis steps)."""
    d = Path(run_dir)
    out = {f"{name}/{f}": h for name, rec in verified_measurements(d).items() for f, h in rec["outputs"].items()}
    for name in (layout.RUN_CONFIG, layout.EVAL_SUBSET):
        out[name] = file_sha256(d / name)
    return out
