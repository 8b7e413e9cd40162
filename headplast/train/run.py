"""The train step: theta0 (shared), then FFT or LoRA with transformers' Trainer."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from headplast.arch.adapters import get_adapter
from headplast.arch.loading import load_model, load_tokenizer, resolve_model
from headplast.errors import HeadplastError
from headplast.orchestration import layout
from headplast.orchestration.io import atomic_copytree, atomic_write_json, read_json, state_dict_hash
from headplast.orchestration.provenance import provenance
from headplast.train.config import TrainConfig
from headplast.train.evaluate import evaluate
from headplast.train.lora import adapted_modules, make_lora_model, resolve_targets, trainable_audit
from headplast.train.metrics import majority_baseline
from headplast.train.prepare import prepare_from_config
from headplast.train.theta0 import build_theta0

log = logging.getLogger("headplast")
THETA0_INFO = "theta0.json"


class NonFiniteLoss(RuntimeError):
    pass


def run_id(cfg: TrainConfig) -> layout.RunId:
    from headplast.train.prepare import task_name

    method = cfg.method.lower()
    if method not in ("fft", "lora"):
        raise HeadplastError(f"unknown --method '{cfg.method}'", "use --method fft or --method lora")
    return layout.RunId(task_name(cfg.task, bool(cfg.train_file)), method, cfg.seed,
                        cfg.lora_r if method == "lora" else None)


def check_output_dir(out: Path, cfg: TrainConfig) -> bool:
    """True if `out` already holds this exact, finished run (skip). Refuses a different run."""
    rc = out / layout.RUN_CONFIG
    if not rc.exists():
        return False
    old = read_json(rc)
    new = json.loads(json.dumps(cfg.run_fields()))
    same = old.get("config") == new
    if cfg.force:
        return False
    if not same:
        diff = {k: (old.get("config", {}).get(k), v) for k, v in new.items()
                if old.get("config", {}).get(k) != v}
        raise HeadplastError(f"{out} already holds a different run (differs in {diff})",
                             "pass --force to overwrite it, or choose another --output-root")
    return old.get("status") == "complete" and (out / layout.CKPT_FINAL).exists()


def ensure_theta0(cfg: TrainConfig, model_path: str, model_key: str, tok, data) -> tuple[Path, dict]:
    """Build theta0 once per (model, task, seed, head-init, ...) and share it between runs."""
    key = hashlib.sha256(json.dumps({"model": model_key, **cfg.theta0_key_fields()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    store = layout.shared_dir(cfg.output_root, "theta0", data.task.name, key)
    if (store / THETA0_INFO).exists() and not cfg.force:
        return store, read_json(store / THETA0_INFO)
    t = time.time()
    model, probe = build_theta0(model_path, data.task, tok, data.train, cfg.seed, cfg.head_init,
                         cfg.max_length, cfg.probe_epochs, cfg.probe_lr)
    val = evaluate(model, data.task, tok, data.validation, cfg.max_length)
    info = {"theta0_hash": state_dict_hash(model.state_dict()), "validation": val, "probe": probe, "key": key,
            "key_fields": {"model": model_key, **cfg.theta0_key_fields()}, "seconds": time.time() - t}
    tmp = Path(tempfile.mkdtemp(prefix="theta0-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / THETA0_INFO, info)
        atomic_copytree(tmp, store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return store, info


def _training_args(cfg: TrainConfig, tmp: str):
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=tmp, num_train_epochs=cfg.num_epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed, save_strategy="no",
        eval_strategy="no", logging_strategy="epoch", report_to="none", use_cpu=not cuda,
        dataloader_pin_memory=cuda, disable_tqdm=False,
        # batches of similar length: dynamic padding then wastes little compute (big win on CPU)
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")


def _make_trainer(model, args, ds, tok):
    from transformers import DataCollatorWithPadding, Trainer

    class GuardedTrainer(Trainer):
        """Stops at the first non-finite loss instead of training on garbage."""

        def compute_loss(self, model, inputs, *a, **kw):
            loss = super().compute_loss(model, inputs, *a, **kw)
            value = loss[0] if isinstance(loss, tuple) else loss
            if not torch.isfinite(value).all():
                raise NonFiniteLoss(f"loss became {value.item()} at step {self.state.global_step}")
            return loss

    return GuardedTrainer(model=model, args=args, train_dataset=ds,
                          data_collator=DataCollatorWithPadding(tok), processing_class=tok)


def run_train(cfg: TrainConfig) -> Path:
    """Train one run; returns its directory. Skips a finished identical run unless cfg.force."""
    from headplast.data.tokenize import as_hf_dataset, encode

    run = run_id(cfg)
    out = layout.run_dir(cfg.output_root, run)
    if check_output_dir(out, cfg):
        log.info("train: %s already complete (use --force to redo)", out)
        return out
    t_start = time.time()
    data = prepare_from_config(cfg)
    model_path = resolve_model(cfg.model)
    tok = load_tokenizer(model_path)
    theta0_dir, theta0_info = ensure_theta0(cfg, model_path, cfg.model or "default", tok, data)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (layout.CKPT_FINAL, layout.RUN_CONFIG):  # a forced re-run starts clean
        p = out / stale
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    atomic_copytree(theta0_dir, out / layout.CKPT_INIT)

    model = load_model(str(out / layout.CKPT_INIT))
    adapter = get_adapter(model)
    record = {"run": run.__dict__, "label": run.label, "config": cfg.run_fields(),
              "model_path": model_path, "status": "training", "theta0": theta0_info,
              "data": _data_info(data), **provenance()}
    if run.method == "lora":
        targets = resolve_targets(adapter, model, cfg.lora_targets)
        # LoRA's A matrices are drawn at random: seed them from the run (this torch seeds every
        # process differently, and Trainer only seeds when it is built, after this)
        from transformers import set_seed
        set_seed(cfg.seed)
        model = make_lora_model(model, adapter, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets)
        record["adapted_modules"] = adapted_modules(model)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        record["adapted_modules"] = "all parameters (full fine-tuning)"
    record["trainable"] = trainable_audit(model, adapter)

    ds = as_hf_dataset(encode(tok, data.train, cfg.max_length))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _make_trainer(model, _training_args(cfg, tmp), ds, tok)
        t = time.time()
        try:
            result = trainer.train()
        except NonFiniteLoss as e:
            record.update(status="failed_nonfinite_loss", error=str(e))
            atomic_write_json(out / layout.RUN_CONFIG, record)
            raise HeadplastError(f"training stopped: {e}. theta0 is kept in {out / layout.CKPT_INIT}; "
                                 f"no ckpt_final was written",
                                 "lower --learning-rate (or check the data), then re-run with --force") from e
        train_seconds = time.time() - t
    model.eval()
    val1 = evaluate(model, data.task, tok, data.validation, cfg.max_length)
    baseline = majority_baseline(data.task, data.train.labels, data.validation.labels)
    theta1_hash = _save_final(model, tok, out, run.method, theta0_info["theta0_hash"])
    record.update(
        status="complete", theta0_hash=theta0_info["theta0_hash"], theta1_hash=theta1_hash,
        validation={"theta0": theta0_info["validation"], "theta1": val1, "majority_baseline": baseline},
        collapsed=bool(val1["metric"] <= baseline + 1e-9),
        train_loss=float(result.training_loss), train_steps=int(result.global_step),
        seconds={"train": train_seconds, "total": time.time() - t_start})
    atomic_write_json(out / layout.RUN_CONFIG, record)
    return out


def _data_info(data) -> dict:
    return {"task": data.task.name, "metric": data.task.metric, "num_labels": data.task.num_labels,
            "train_size": len(data.train), "validation_size": len(data.validation),
            "train_source": data.full_train.source, "train_fingerprint": data.train.fingerprint(),
            "validation_fingerprint": data.validation.fingerprint()}


def _save_final(model, tok, out: Path, method: str, theta0_hash: str) -> str:
    """ckpt_final: the full model (FFT) or the adapter (LoRA), written atomically."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".ckpt_final."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if method == "lora":
            from peft import get_peft_model_state_dict
            h = state_dict_hash(get_peft_model_state_dict(model))
        else:
            h = state_dict_hash(model.state_dict())
        atomic_write_json(tmp / "headplast_theta.json", {"theta0_hash": theta0_hash, "theta1_hash": h})
        atomic_copytree(tmp, out / layout.CKPT_FINAL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return h
