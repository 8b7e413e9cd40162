"""The measure step: the eval subset, then every declared measurement of a trained run.

Each measurement is a step of its own under the freshness rule (key = its settings and the
content hashes of what it needs). A measurement of theta0 alone is computed once per key in
a shared store and copied into every run with the same theta0.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch

from headplast.arch.adapters import get_adapter
from headplast.arch.device import compute_device, describe, exact_fp32
from headplast.arch.loading import load_model, load_tokenizer
from headplast.data.prepare import prepare_from_config
from headplast.data.subset import check_same_subset, make_eval_subset
from headplast.data.tokenize import encode
from headplast.errors import HeadplastError
from headplast.measure import registry
from headplast.measure.config import MeasureConfig
from headplast.measure.declare import Measurement
from headplast.measure.shard import announce, current, reporting
from headplast.measure.update import merged_peft_model
from headplast.steps import versions
from headplast.steps.outcome import Outcome, fresh_or_refuse, run_recorded
from headplast.steps.train_step import train_command
from headplast.store import layout, locks, records
from headplast.store.io import (atomic_copyfile, atomic_save_npy, atomic_write_json, atomic_write_jsonl,
                                clean_temporaries, read_json, state_dict_hash, text_key)

log = logging.getLogger("headplast")


def _retrain(rc: dict | None, run_dir: Path) -> str:
    if not rc or "config" not in rc:
        return f"headplast train ... (no usable run_config.json in {run_dir})"
    return train_command({**rc["config"], "output_root": str(layout.root_of(run_dir))})


def load_run(run_dir: Path) -> dict:
    """run_config.json of a finished training run whose checkpoints are as training wrote them."""
    rc_path = run_dir / layout.RUN_CONFIG
    rc = read_json(rc_path, "run_config.json", "run `headplast train` for this run first") \
        if rc_path.exists() else None
    for sub in (layout.CKPT_INIT, layout.CKPT_FINAL):
        if not (run_dir / sub).exists():
            raise HeadplastError(f"{run_dir / sub} is missing: this run was not (fully) trained",
                                 f"run `{_retrain(rc, run_dir)}` first")
    if rc is None or rc.get("status") != "complete" or records.read_record(run_dir, "train") is None:
        raise HeadplastError(f"{rc_path} does not record a completed training run",
                             f"run `{_retrain(rc, run_dir)} --force`")
    records.verify(run_dir, "train", f"re-run `{_retrain(rc, run_dir)} --force`")
    return rc


class MeasureContext:
    """The inputs of a run's measurements (headplast.measure.declare.Inputs), loaded lazily."""

    def __init__(self, run_dir: Path, cfg: MeasureConfig):
        # under torchrun each rank computes on its own LOCAL_RANK GPU, whatever --device says
        self.device = compute_device(cfg.device)
        self.given = cfg  # max_tokens / batch_size None: sized for the device, once (recorded in measure_meta.json)
        self.cfg, self.dir = cfg.for_device(self.device), Path(run_dir)
        self.rc = load_run(self.dir)
        meta = self.dir / layout.MEASURE_META
        # where this run was measured, when the device is left to the machine (see _keys)
        self.recorded_device_type = (read_json(meta).get("compute", {}).get("type")
                                     if cfg.device is None and meta.exists() else None)
        tc = self.rc["config"]
        src = cfg.eval_source or tc["eval_source"]
        size = cfg.eval_size or tc["eval_size"]
        if src == "holdout" and (tc["eval_source"] != "holdout" or size != tc["eval_size"]):
            raise HeadplastError("--eval-source holdout needs the same holdout to have been kept out of "
                                 "training", "re-train with --eval-source holdout --eval-size "
                                 f"{size}, or measure on validation")
        data = prepare_from_config(tc)
        self.task = data.task
        split = data.validation if src == "validation" else data.full_train
        # kept apart from the training examples by their text, and its overlap with them recorded
        self.subset = make_eval_subset(data.task.name, src, size, split, data.train, data.train_indices)
        self.tok = load_tokenizer(str(self.dir / layout.CKPT_INIT))
        self.pad_id = self.tok.pad_token_id
        self.max_length = tc["max_length"]
        self.enc = encode(self.tok, split.subset(self.subset.indices), self.max_length)
        self._models: dict = {}

    def needs_hashes(self, m: Measurement) -> dict:
        """Content hashes of what a measurement is computed from."""
        ids = {"theta0": self.rc["theta0_hash"], "theta1": self.rc["theta1_hash"],
               "eval": {"subset": self.subset.fingerprint, "indices": text_key(self.subset.indices),
                        "max_length": self.max_length}}
        return {n: ids[n] for n in m.needs}

    def model(self, which: str, exact: bool = False):
        if (which, exact) not in self._models:
            self._models[(which, exact)] = self._load(which) if exact else self._for_compute(self.model(which, True))
        return self._models[(which, exact)]

    def _load(self, which: str):
        if which == "theta0":
            m = load_model(str(self.dir / layout.CKPT_INIT))
            if state_dict_hash(m.state_dict()) != self.rc["theta0_hash"]:
                raise HeadplastError(f"{self.dir / layout.CKPT_INIT} is not the theta0 this run was trained "
                                     "from (content hash differs from run_config.json)",
                                     f"re-run `{_retrain(self.rc, self.dir)} --force`")
            return m.eval()
        final = self.dir / layout.CKPT_FINAL
        if self.rc["run"]["method"] == "fft":
            return load_model(str(final)).eval()
        meta = final / layout.ADAPTER_META
        if meta.exists() and json.loads(meta.read_text())["theta0_hash"] != self.rc["theta0_hash"]:
            raise HeadplastError(f"the adapter in {final} was trained from a different theta0 than "
                                 f"{self.dir / layout.CKPT_INIT} (hashes differ)",
                                 "make sure ckpt_init and ckpt_final come from the same training run: "
                                 f"re-run `{_retrain(self.rc, self.dir)} --force`")
        try:
            return merged_peft_model(str(self.dir / layout.CKPT_INIT), str(final))
        except RuntimeError as e:
            raise HeadplastError(f"the adapter in {final} does not fit {self.dir / layout.CKPT_INIT}: {e}",
                                 f"re-run `{_retrain(self.rc, self.dir)} --force`") from e

    def _for_compute(self, model):
        """The model on the compute device and dtype; a copy when that changes it, so the fp32
        weights used for weight differences are never rounded."""
        p = next(model.parameters())
        dtype = getattr(torch, self.cfg.dtype)  # one of measure.config.DTYPES
        if p.device == self.device and p.dtype == dtype:
            return model
        return copy.deepcopy(model).to(self.device, dtype)


def _compute(m: Measurement, ctx: MeasureContext):
    if m.split and current().world > 1:  # the other processes join in (run_measure's _follow)
        announce(m.name)
    return m.compute(ctx)


def _write(m: Measurement, ctx: MeasureContext, base: Path) -> None:
    res = _compute(m, ctx)
    if not isinstance(res, m.result):
        raise TypeError(f"{m.name} computed a {type(res).__name__}, declared {m.result.__name__}")
    values = res.per_example()
    values = values if isinstance(values, dict) or values is None else {m.fields[0]: values}
    for f, arr in (values or {}).items():
        atomic_save_npy(base / m.per_example_files[m.column(f)], arr)
    extra = res.extra_files()
    if set(extra) != set(m.extra_files):
        raise TypeError(f"{m.name} wrote {sorted(extra)}, declared {sorted(m.extra_files)}")
    for name, content in extra.items():
        (atomic_save_npy if name.endswith(".npy") else atomic_write_jsonl)(base / name, content)
    atomic_write_jsonl(base / m.file, res.rows())


# how matrix products are computed while measuring (exact_fp32), part of a GPU result's key: fp32 in
# IEEE fp32; bf16/fp16 (--dtype) accumulating in fp32 throughout (from the decoders' issue on)
PRECISION = "ieee, half products with fp32 reductions"


def _key(m: Measurement, ctx: MeasureContext, device_type: str | None = None) -> str:
    """Settings and input hashes; a measurement computed on a GPU also names the device type and
    the fp32 precision (on a CPU they are left out: the keys of runs measured before stay valid;
    --dtype is a setting of every measurement computed on the device already)."""
    settings = ctx.cfg.settings(m.settings)
    device_type = device_type or ctx.device.type
    if m.on_device and device_type != "cpu":
        settings["compute"] = {"device": device_type, "fp32": PRECISION}
    return versions.key(m.name, settings, ctx.needs_hashes(m))


def _keys(m: Measurement, ctx: MeasureContext) -> list[str]:
    """The keys under which a measurement on disk is up to date: this device's, and, without
    --device, that of the device the run was measured on (measure_meta.json): a CPU-only node looking
    at runs measured on GPUs finds them done instead of measuring them again on its CPU."""
    keys = [_key(m, ctx)]
    recorded = getattr(ctx, "recorded_device_type", None)
    if recorded and recorded != ctx.device.type:
        keys.append(_key(m, ctx, recorded))
    return keys


def _fresh(m: Measurement, ctx: MeasureContext, force: bool) -> bool:
    fix = f"re-run `headplast measure {ctx.dir} --force`"
    return any([fresh_or_refuse(ctx.dir, m.name, k, force, fix) for k in _keys(m, ctx)])


def _measure_one(m: Measurement, ctx: MeasureContext, force: bool) -> str | float:
    d, key = ctx.dir, _key(m, ctx)
    if _fresh(m, ctx, force):
        return "skipped"
    if not m.shared:
        return round(run_recorded(d, m.name, key, m.outputs, lambda: _write(m, ctx, d)), 2)
    store = layout.shared_dir(layout.root_of(d), m.name, ctx.task.name, key)
    how: str | float = "shared"  # computed already for a run with the same theta0
    with locks.hold(store, f"the shared {m.name} {store}"):
        if force or not records.freshness(store, m.name, key).fresh:
            how = round(run_recorded(store, m.name, key, m.outputs, lambda: _write(m, ctx, store)), 2)

        def copy_in():
            records.verify(store, m.name, f"re-run `headplast measure {d} --force`")
            for f in m.outputs:
                atomic_copyfile(store / f, d / f)
        run_recorded(d, m.name, key, m.outputs, copy_in, shared_from=str(store))
    return how


def _head_parameters(model) -> dict:
    """What 'a head's parameters' are in this model, and which per-head parameters are left out."""
    ad = get_adapter(model)
    other = ad.unmeasured_head_modules(model)
    out = {"included": "rows of " + ", ".join(ad.qkvo[:3]) + f" and columns of {ad.qkvo[3]} (weights; "
                       "biases are excluded from U and the gradient scores)",
           "not_included": other}
    if other:
        out["note"] = ("these modules also have per-head rows (DeBERTa with share_att_key=False projects the "
                       "relative positions separately); by the definition of U they are not part of "
                       "U, the gradient/Fisher scores or LoRA's default targets")
    return out


def _summary(d: Path, step: str) -> dict:
    rec = records.read_record(d, step)
    return {"key": rec["key"], "seconds": rec["seconds"], "shared_from": rec.get("shared_from"),
            "record": str(records.record_path(d, step).relative_to(d))}


def _outdated_optional(m: Measurement, ctx: MeasureContext) -> bool:
    """An optional measurement on disk computed from other weights or examples than this run's now."""
    rec = records.read_record(ctx.dir, m.name)
    return rec is not None and rec.get("key") not in _keys(m, ctx)


def _up_to_date(ctx: MeasureContext) -> bool:
    """Every measurement fresh and the eval subset as recorded: nothing to do, nothing written."""
    d = ctx.dir
    if not all([_fresh(m, ctx, False) for m in registry.enabled(ctx.cfg)]):
        return False
    if any(_outdated_optional(m, ctx) for m in registry.MEASUREMENTS if not m.is_enabled(ctx.cfg)):
        return False
    return (d / layout.MEASURE_META).exists() and (d / layout.EVAL_SUBSET).exists() \
        and read_json(d / layout.EVAL_SUBSET) == ctx.subset.to_dict()


def run_measure(run_dir: str | Path, cfg: MeasureConfig = MeasureConfig(), force: bool = False) -> Outcome:
    """Measure one trained run; timings: {measurement: seconds, 'shared' or 'skipped'}.

    Started by torchrun / accelerate launch, rank 0 runs the step (it alone reads records and
    writes) and the other processes compute their shares of each split measurement it starts.
    A failure on any rank stops every rank with an error (headplast.measure.shard.reporting)."""
    shard = current()
    with reporting():
        ctx = MeasureContext(Path(run_dir), cfg if shard.leader else replace(cfg, progress=False))
        if not shard.leader:
            with exact_fp32():
                return _follow(ctx)
        out = _lead(ctx, force)
        if shard.world > 1:
            announce(None)  # no more split measurements: the others return
        return out


def _lead(ctx: MeasureContext, force: bool) -> Outcome:
    d = ctx.dir
    if not force and _up_to_date(ctx):
        return Outcome("skipped", d, "", {m.name: "skipped" for m in registry.enabled(ctx.cfg)})
    with locks.hold(d, f"{d} (measure)"), exact_fp32() as precision:  # IEEE fp32 products, whatever the environment
        return _measure_all(ctx, force, precision)


def _follow(ctx: MeasureContext) -> Outcome:
    """A process other than rank 0: its share of every split measurement rank 0 announces."""
    done = {}
    while (name := announce(None)) is not None:
        registry.get(name).compute(ctx)
        done[name] = "split"
    return Outcome("ran" if done else "skipped", ctx.dir, f"rank {current().rank}", done)


def _compute_meta(ctx: MeasureContext, precision: dict) -> dict:
    """What the measurements computed on the device were computed on, and how."""
    sized = [n for n in ("max_tokens", "batch_size") if getattr(ctx.given, n) is None]
    return {**describe(ctx.device), "dtype": ctx.cfg.dtype, "precision": precision,
            "sized_by_device": {n: getattr(ctx.cfg, n) for n in sized}, "processes": current().world}


def _measure_all(ctx: MeasureContext, force: bool, precision: dict) -> Outcome:
    d, cfg = ctx.dir, ctx.cfg
    clean_temporaries(d)
    subset_path = d / layout.EVAL_SUBSET
    if subset_path.exists() and not force:
        check_same_subset(read_json(subset_path), ctx.subset.to_dict())
    atomic_write_json(subset_path, ctx.subset.to_dict())
    for m in registry.MEASUREMENTS:  # not asked for this time: kept only while it still fits this run
        if not m.is_enabled(cfg) and _outdated_optional(m, ctx):
            records.record_path(d, m.name).unlink()
            for f in m.outputs:
                (d / f).unlink(missing_ok=True)
    timings = {m.name: _measure_one(m, ctx, force) for m in registry.enabled(cfg)}
    status = "skipped" if set(timings.values()) == {"skipped"} else "ran"
    if status == "ran" or not (d / layout.MEASURE_META).exists():
        meta = {"settings": {**asdict(cfg), "eval_source": ctx.subset.eval_source, "eval_size": ctx.subset.size,
                             "max_length": ctx.max_length},
                "compute": _compute_meta(ctx, precision),
                "head_parameters": _head_parameters(ctx.model("theta0", exact=True)),
                "measurements": {m.name: {"needs": list(m.needs), **_summary(d, m.name)}
                                 for m in registry.MEASUREMENTS if records.read_record(d, m.name)}}
        atomic_write_json(d / layout.MEASURE_META, meta)
    return Outcome(status, d, "", timings)
