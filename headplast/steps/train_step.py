"""The train step: theta0 (shared between runs), then FFT or LoRA; writes ckpt_init/,
ckpt_final/ and run_config.json into the run directory and records them."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from headplast.analysis import thresholds
from headplast.arch.adapters import get_adapter
from headplast.arch.device import describe, exact_fp32, gpu_count, precision_state
from headplast.arch.loading import load_model, load_tokenizer, resolve_model, stored_dtype
from headplast.data.metrics import majority_baseline
from headplast.data.prepare import prepare_from_config, task_name
from headplast.errors import HeadplastError
from headplast.options import as_flags
from headplast.report.lines import train_line
from headplast.steps import versions
from headplast.steps.outcome import Outcome, recorded_step
from headplast.steps.rank_source import guided_ranks, rank_source
from headplast.steps.tracking import check_tracker, tracker_record, tracker_run_name
from headplast.store import layout, locks, records
from headplast.store.io import (atomic_copytree, check_output_root, atomic_write_json, read_json, state_dict_hash, text_key)
from headplast.store.provenance import provenance
from headplast.train import recipes
from headplast.train.config import IMPLIED_BY_BF16, LEGACY, METHODS, TrainConfig
from headplast.train.evaluate import evaluate
from headplast.train.fit import NonFiniteLoss, fine_tune, trainable_model
from headplast.train.lora import resolve_targets, trainable_audit
from headplast.train.speed import check_speed, resolve_speed, training_device
from headplast.train.theta0 import build_theta0

log = logging.getLogger("headplast")
OUTPUTS = (layout.CKPT_INIT, layout.CKPT_FINAL, layout.RUN_CONFIG)


def run_id(cfg: TrainConfig) -> layout.RunId:
    method = cfg.method.lower()
    if method not in METHODS:
        raise HeadplastError(f"unknown --method '{cfg.method}'", "use --method fft or --method lora")
    return layout.RunId(task_name(cfg.task, bool(cfg.train_file)), method, cfg.seed,
                        cfg.lora_r if method == "lora" else None, cfg.rank_by if cfg.guided else None)


def train_key(cfg: TrainConfig, rank_source: dict | None = None) -> str:
    inputs = {"model": cfg.model or "default"}
    if rank_source:  # guided ranks: the scores they come from
        inputs["rank_source"] = rank_source["hashes"]
    return versions.key("train", cfg.run_fields(), inputs)


def train_command(config: dict) -> str:
    """The command that reproduces a recorded training run (from run_config.json's 'config')."""
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
                         if k in TrainConfig.__dataclass_fields__})
    flags = ["--task", cfg.task, "--method", cfg.method, "--seed", str(cfg.seed)]
    flags += as_flags(cfg, skip=("task", "method", "seed", "force", "device"))  # where is not what
    return "headplast train " + " ".join(flags)


def _refuse_other_run(out: Path, cfg: TrainConfig) -> None:
    """An existing run with other settings is never overwritten without --force."""
    rc = out / layout.RUN_CONFIG
    if cfg.force or not rc.exists():
        return
    old = read_json(rc).get("config", {})
    new = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.run_fields().items()}
    diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if diff:
        legacy = {k: v for k, v in LEGACY.items() if k in diff and diff[k][0] is None}
        flags = as_flags(TrainConfig(**legacy))  # e.g. --train-dtype float32 --dropout-masks torch
        keep = f"; it was trained before {'/'.join(flags[::2])} existed: to keep it, pass {' '.join(flags)}" \
            if legacy else ""
        if "lora_alpha" in diff and diff["lora_alpha"][0] == 16.0 and cfg.lora_alpha is None:
            keep += ("; --lora-alpha now defaults to 2 * --lora-r (it was 16 for every rank): to keep this run, "
                     "pass --lora-alpha 16")
        raise HeadplastError(f"{out} already holds a different run (differs in {diff})",
                             f"pass --force to overwrite it, or choose another --output-root{keep}")


def theta0_key(cfg: TrainConfig) -> str:
    fields = {"model": cfg.model or "default", **cfg.theta0_key_fields()}
    if versions.version_of("theta0") != 1:
        fields["version"] = versions.version_of("theta0")
    return text_key(fields)


def ensure_theta0(cfg: TrainConfig, model_path: str, tok, data, dest: Path) -> dict:
    """Build theta0 once per (model, task, seed, head-init, ...), shared between runs, and copy it
    to `dest`. The shared entry is locked while it is built or copied."""
    key = theta0_key(cfg)
    store = layout.shared_dir(cfg.output_root, "theta0", data.task.name, key)
    with locks.hold(store, f"the shared theta0 {store}"):
        state = records.freshness(store, "theta0", key)
        if state.fresh and not cfg.force:
            info = read_json(store / layout.THETA0_INFO)
        else:
            info = _build_theta0(cfg, model_path, tok, data, store, key, state)
        atomic_copytree(store, dest, ignore_hidden=True)
    return info


def _build_theta0(cfg: TrainConfig, model_path: str, tok, data, store: Path, key: str, state) -> dict:
    if state.state == "changed":
        log.warning("shared theta0 %s was altered (%s): rebuilding it", store, state.detail)
    t = time.time()
    device = training_device(cfg.device)
    with exact_fp32() as precision:  # the probe's features and fit in IEEE fp32, on the training device
        model, probe = build_theta0(model_path, data.task, tok, data.train, cfg.seed, cfg.head_init,
                                    cfg.max_length, cfg.probe_epochs, cfg.probe_lr, device)
        val = evaluate(model, data.task, tok, data.validation, cfg.max_length)
    info = {"theta0_hash": state_dict_hash(model.state_dict()), "validation": val, "probe": probe, "key": key,
            "key_fields": {"model": cfg.model or "default", **cfg.theta0_key_fields()}, "seconds": time.time() - t,
            "device": describe(device), "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / layout.THETA0_INFO, info)
        atomic_copytree(tmp, store)
    records.write_record(store, "theta0", key, ["."], seconds=info["seconds"], version=versions.version_of("theta0"))
    return info


def resolved_config(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """The config a run is trained and keyed with: recipe defaults filled in, a local model by
    its absolute path, the device and speed settings as this run recorded them when it was
    trained (else this machine's defaults). Also {field: where its value came from}."""
    if cfg.model and Path(cfg.model).is_dir():
        cfg = replace(cfg, model=str(Path(cfg.model).resolve()))
    cfg, sources = recipes.resolve(cfg)
    cfg, hardware = resolve_speed(cfg, None if cfg.force else recorded_speed(cfg))
    return cfg, {**sources, **hardware}


def recorded_speed(cfg: TrainConfig) -> dict | None:
    """The device and speed settings the run at cfg's place was trained with, as run_config.json
    recorded them; None when there is no run there yet. Runs trained before they were recorded
    get what training did then (LEGACY; fused clipping and the used embedding rows came with
    bfloat16)."""
    try:
        rc_path = layout.run_dir(cfg.output_root, run_id(cfg)) / layout.RUN_CONFIG
        rc = read_json(rc_path) if rc_path.exists() else None
    except HeadplastError:
        return None  # unreadable: judged as a new run (and refused or retrained as usual)
    if not rc or "config" not in rc:
        return None
    if "speed" in rc:
        return {**rc["speed"], "device": rc.get("device", {}).get("type")}
    old = {k: rc["config"].get(k, legacy) for k, legacy in LEGACY.items()}
    return {**old, **{k: old["train_dtype"] == "bfloat16" for k in IMPLIED_BY_BF16}}


def run_train(cfg: TrainConfig) -> Outcome:
    """Train one run; skips it when the same run is already complete and unaltered. Inputs (the
    data, the model, an existing other run) are checked before anything is built or removed."""
    cfg, defaults = resolved_config(cfg)
    run = run_id(cfg)
    out = layout.run_dir(check_output_root(cfg.output_root), run)
    source = rank_source(cfg, run.task)
    inputs: dict = {"source": source}

    def check():
        _refuse_other_run(out, cfg)
        check_speed(cfg, training_device(cfg.device))
        check_tracker(cfg.report_to)
        inputs["data"] = prepare_from_config(cfg)
        inputs["model_path"] = resolve_model(cfg.model)

    return recorded_step(out, "train", train_key(cfg, source), OUTPUTS, lambda: _train(cfg, run, out, defaults, **inputs),
                         cfg.force,
                         lambda: train_line(read_json(out / layout.RUN_CONFIG)),
                         fix=f"re-run `{train_command(cfg.to_dict())} --force`", check=check)


def _train(cfg: TrainConfig, run: layout.RunId, out: Path, defaults: dict, data, model_path: str,
           source: dict | None) -> None:
    for stale in (out / layout.RUN_CONFIG, out / layout.CKPT_FINAL, out / layout.TENSORBOARD_DIR):  # start clean
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    t_start = time.time()
    if gpu_count() > 1 and cfg.device != "cpu":
        log.warning("%d GPUs are visible: this run trains on the first one only (its batch is --batch-size %d, "
                    "as recorded); to use every GPU, run several runs at once: headplast sweep --engine ray",
                    gpu_count(), cfg.batch_size)
    tok = load_tokenizer(model_path)
    theta0_info = ensure_theta0(cfg, model_path, tok, data, out / layout.CKPT_INIT)
    model = load_model(str(out / layout.CKPT_INIT))
    adapter = get_adapter(model)
    pattern = source and guided_ranks(source, model, adapter, resolve_targets(adapter, model, cfg.lora_targets),
                                      cfg.lora_r)
    model, adapted = trainable_model(model, adapter, cfg, pattern and pattern["ranks"])
    record = {"run": run.__dict__, "label": run.label, "config": cfg.run_fields(), "model_path": model_path,
              "status": "training", "theta0": theta0_info, "data": _data_info(data), "adapted_modules": adapted,
              "trainable": trainable_audit(model, adapter), "command": train_command(cfg.to_dict()),
              "model": {"stored_dtype": stored_dtype(model_path), "loaded_dtype": "float32",
                        # what the task head reads, and the padding that finds it (decoders: the last token)
                        "reads": "last non-padding token" if adapter.reads_last else "token 0",
                        "pad_token_id": tok.pad_token_id, "pad_is_eos": tok.pad_token == tok.eos_token,
                        "padding_side": tok.padding_side,
                        # query heads per K/V head (grouped-query attention; 1 without): the analysis's K/V groups
                        "kv_group_size": adapter.group_size(model.config)},
              "device": describe(training_device(cfg.device)), "speed": cfg.speed(), "precision": precision_state(),
              **({"rank_pattern": pattern} if pattern else {}),
              "defaults": {"filled": defaults, "why": recipes.why(data.task.name)}, **provenance()}
    t = time.time()
    try:
        result = fine_tune(model, tok, data.train, cfg, str(out / layout.TENSORBOARD_DIR), tracker_run_name(run))
    except NonFiniteLoss as e:
        record.update(status="failed_nonfinite_loss", error=str(e))
        atomic_write_json(out / layout.RUN_CONFIG, record)
        raise HeadplastError(f"training stopped: {e}. theta0 is kept in {out / layout.CKPT_INIT}; "
                             f"no ckpt_final was written",
                             "lower --learning-rate (or check the data), then re-run with --force") from e
    train_seconds = time.time() - t
    val1 = evaluate(model, data.task, tok, data.validation, cfg.max_length)
    baseline = majority_baseline(data.task, data.train.labels, data.validation.labels)
    theta1_hash = _save_final(model, tok, out, run.method, theta0_info["theta0_hash"])
    record.update(
        status="complete", theta0_hash=theta0_info["theta0_hash"], theta1_hash=theta1_hash,
        validation={"theta0": theta0_info["validation"], "theta1": val1, "majority_baseline": baseline},
        collapsed=thresholds.collapsed(val1["metric"], baseline), tracking=tracker_record(cfg.report_to, run),
        train_loss=float(result.training_loss), train_steps=int(result.global_step),
        seconds={"train": train_seconds, "total": time.time() - t_start})
    atomic_write_json(out / layout.RUN_CONFIG, record)


def _data_info(data) -> dict:
    return {"task": data.task.name, "metric": data.task.metric, "num_labels": data.task.num_labels,
            "train_size": len(data.train), "validation_size": len(data.validation),
            "train_source": data.full_train.source, "train_fingerprint": data.train.fingerprint(),
            "validation_fingerprint": data.validation.fingerprint()}


def _save_final(model, tok, out: Path, method: str, theta0_hash: str) -> str:
    """ckpt_final: the full model (FFT) or the adapter (LoRA), written atomically."""
    if method == "lora":
        from peft import get_peft_model_state_dict
        h = state_dict_hash(get_peft_model_state_dict(model))
    else:
        h = state_dict_hash(model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / layout.ADAPTER_META, {"theta0_hash": theta0_hash, "theta1_hash": h})
        atomic_copytree(tmp, out / layout.CKPT_FINAL)
    return h
