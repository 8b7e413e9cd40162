"""The measure step: eval subset, importance (pre/post), gradient/Fisher, update magnitude.

Owns the files; the measurement functions it calls are pure. Measurements on theta0 are
computed once per (theta0, eval subset, settings) in a shared store and copied into
every run that has the same theta0. Every output is written atomically; a step whose
output exists and was made from the same inputs is skipped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from headplast.arch.adapters import get_adapter
from headplast.arch.loading import load_model, load_tokenizer
from headplast.data.tokenize import encode
from headplast.errors import HeadplastError
from headplast.measure.ablation import ablation_importance
from headplast.measure.gradfisher import grad_fisher
from headplast.measure.subset import check_same_subset, make_eval_subset
from headplast.measure.update import merged_peft_model, qkvo_weights, update_magnitude
from headplast.orchestration import layout
from headplast.orchestration.io import (atomic_save_npy, atomic_write_json, atomic_write_jsonl, read_json,
                                        read_jsonl, state_dict_hash)
from headplast.train.prepare import prepare_from_config

log = logging.getLogger("headplast")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
IMPORTANCE_FIELDS = ("importance", "importance_se", "metric_delta", "kl")
GRADFISHER_FIELDS = ("grad_norm", "fisher", "gate_grad", "gate_fisher", "taylor")
UPDATE_FIELDS = ("U", "Urel", "U_q", "U_k", "U_v", "U_o")


@dataclass(frozen=True)
class MeasureConfig:
    run_dir: str
    eval_size: int | None = None  # None: as recorded at training
    eval_source: str | None = None
    ablation: str = "zero"  # zero | mean
    batch_size: int = 32
    grad_batch_size: int = 16
    dtype: str = "float32"
    device: str | None = None  # None: cuda if available
    max_tokens: int = 1 << 14  # tokens per ablation pass (heads of a layer batched together)
    force: bool = False
    progress: bool = True


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _train_cmd(run_cfg: dict | None, run_dir: Path) -> str:
    if not run_cfg:
        return f"headplast train ... (no run_config.json in {run_dir})"
    c = run_cfg["config"]
    cmd = f"headplast train --task {c['task']} --method {c['method']} --seed {c['seed']}"
    if c["method"] == "lora":
        cmd += f" --lora-r {c['lora_r']} --lora-alpha {c['lora_alpha']}"
    return cmd + (f" --model {c['model']}" if c.get("model") else "")


def load_run(run_dir: Path) -> dict:
    """run_config.json of a finished training run, with clear errors for what is missing."""
    rc_path = run_dir / layout.RUN_CONFIG
    rc = read_json(rc_path, "run_config.json", "run `headplast train` for this run first") \
        if rc_path.exists() else None
    for sub in (layout.CKPT_INIT, layout.CKPT_FINAL):
        if not (run_dir / sub).exists():
            raise HeadplastError(f"{run_dir / sub} is missing: this run was not (fully) trained",
                                 f"run `{_train_cmd(rc, run_dir)}` first")
    if rc is None or rc.get("status") != "complete":
        raise HeadplastError(f"{rc_path} does not record a completed training run",
                             f"run `{_train_cmd(rc, run_dir)} --force`")
    return rc


class MeasureContext:
    """What the steps of one measure call share: data, tokenizer, models, settings."""

    def __init__(self, cfg: MeasureConfig):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.rc = load_run(self.dir)
        tc = self.rc["config"]
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if cfg.dtype not in DTYPES:
            raise HeadplastError(f"unknown --dtype {cfg.dtype}", f"use one of {list(DTYPES)}")
        src = cfg.eval_source or tc["eval_source"]
        size = cfg.eval_size or tc["eval_size"]
        if src == "holdout" and (tc["eval_source"] != "holdout" or size != tc["eval_size"]):
            raise HeadplastError("--eval-source holdout needs the same holdout to have been kept out of "
                                 "training", "re-train with --eval-source holdout --eval-size "
                                 f"{size}, or measure on validation")
        self.data = prepare_from_config(tc)
        split = self.data.validation if src == "validation" else self.data.full_train
        self.subset = make_eval_subset(self.data.task.name, src, size, split)
        self.examples = split.subset(self.subset.indices)
        self.tok = load_tokenizer(str(self.dir / layout.CKPT_INIT))
        self.max_length = tc["max_length"]
        self.enc = encode(self.tok, self.examples, self.max_length)
        self._theta0 = None

    @property
    def settings(self) -> dict:
        return {"subset": self.subset.fingerprint, "indices": _key(self.subset.indices),
                "max_length": self.max_length, "dtype": self.cfg.dtype}

    def theta0(self):
        if self._theta0 is None:
            m = load_model(str(self.dir / layout.CKPT_INIT))
            h = state_dict_hash(m.state_dict())
            if h != self.rc["theta0_hash"]:
                raise HeadplastError(f"{self.dir / layout.CKPT_INIT} is not the theta0 this run was trained "
                                     "from (content hash differs from run_config.json)",
                                     f"re-run `{_train_cmd(self.rc, self.dir)} --force`")
            self._theta0 = m.eval()
        return self._theta0

    def theta1(self):
        final = self.dir / layout.CKPT_FINAL
        if self.rc["run"]["method"] == "fft":
            return load_model(str(final)).eval()
        meta = final / "headplast_theta.json"
        if meta.exists() and json.loads(meta.read_text())["theta0_hash"] != self.rc["theta0_hash"]:
            raise HeadplastError(f"the adapter in {final} was trained from a different theta0 than "
                                 f"{self.dir / layout.CKPT_INIT} (hashes differ)",
                                 "make sure ckpt_init and ckpt_final come from the same training run: "
                                 f"re-run `{_train_cmd(self.rc, self.dir)} --force`")
        try:
            return merged_peft_model(str(self.dir / layout.CKPT_INIT), str(final))
        except RuntimeError as e:
            raise HeadplastError(f"the adapter in {final} does not fit {self.dir / layout.CKPT_INIT}: {e}",
                                 f"re-run `{_train_cmd(self.rc, self.dir)} --force`") from e

    def for_compute(self, model):
        """The model on the compute device and dtype; a copy when that changes it, so the fp32
        weights used for the update measure are never rounded."""
        p = next(model.parameters())
        if p.device == self.device and p.dtype == DTYPES[self.cfg.dtype]:
            return model
        return copy.deepcopy(model).to(self.device, DTYPES[self.cfg.dtype])


def _fresh(meta: dict, step: str, key: str, paths: list[Path], n_rows: int, fields) -> bool:
    """The step's outputs exist, are complete, and were made from the same inputs."""
    if meta.get(step, {}).get("key") != key or not all(p.exists() for p in paths):
        return False
    for p in paths:
        if p.suffix == ".jsonl":
            read_jsonl(p, n_rows, fields)  # raises on a truncated or malformed file
    return True


def _importance(ctx: MeasureContext, model):
    c = ctx.cfg
    return ablation_importance(ctx.for_compute(model), get_adapter(model), ctx.enc, ctx.data.task,
                               ctx.tok.pad_token_id, c.batch_size, c.ablation, c.max_tokens, c.progress)


def _write_importance(res, jsonl: Path, npy: Path) -> None:
    atomic_save_npy(npy, res.losses)
    atomic_write_jsonl(jsonl, [{**r, "ablation": res.ablation} for r in res.rows()])


def _shared_copy(store: Path, run_dir: Path, names: list[str]) -> None:
    for n in names:
        tmp = run_dir / f".{n}.copy"
        shutil.copyfile(store / n, tmp)
        tmp.replace(run_dir / n)


def run_measure(cfg: MeasureConfig) -> dict:
    """Measure one trained run; returns {step: seconds or 'skipped'}."""
    ctx = MeasureContext(cfg)
    d = ctx.dir
    meta_path = d / layout.MEASURE_META
    meta = {} if cfg.force or not meta_path.exists() else read_json(meta_path)
    old_subset = d / layout.EVAL_SUBSET
    if old_subset.exists() and not cfg.force:
        check_same_subset(read_json(old_subset), ctx.subset.to_dict())
    atomic_write_json(old_subset, ctx.subset.to_dict())
    m0 = ctx.theta0()
    n = get_adapter(m0).num_layers(m0.config) * get_adapter(m0).num_heads(m0.config)
    timings: dict = {}
    theta0_hash, theta1_hash = ctx.rc["theta0_hash"], ctx.rc["theta1_hash"]
    task = ctx.data.task.name
    root = layout.root_of(d)

    def step(name, key, outputs, fields, compute, shared_kind=None):
        paths = [d / o for o in outputs]
        if not cfg.force and _fresh(meta, name, key, paths, n, fields):
            timings[name] = "skipped"
            return
        t = time.time()
        store = layout.shared_dir(root, shared_kind, task, key) if shared_kind else None
        if store is not None and not cfg.force and all((store / o).exists() for o in outputs):
            _shared_copy(store, d, outputs)  # computed already for a run with the same theta0
            timings[name] = "shared"
        else:
            compute(store or d)
            if store is not None:
                _shared_copy(store, d, outputs)
            timings[name] = round(time.time() - t, 2)
        meta[name] = {"key": key, "seconds": timings[name]}
        atomic_write_json(meta_path, meta)

    pre_key = _key("importance_pre", theta0_hash, ctx.settings, cfg.ablation)
    step("importance_pre", pre_key, [layout.IMPORTANCE["pre"], layout.LOSSES["pre"]], IMPORTANCE_FIELDS,
         lambda out: _write_importance(_importance(ctx, ctx.theta0()), out / layout.IMPORTANCE["pre"],
                                       out / layout.LOSSES["pre"]), "importance_pre")
    gf_key = _key("gradfisher_pre", theta0_hash, ctx.settings)
    step("gradfisher_pre", gf_key, [layout.GRADFISHER], GRADFISHER_FIELDS,
         lambda out: _write_gradfisher(ctx, out / layout.GRADFISHER), "gradfisher_pre")
    theta1 = {}

    def get_theta1():
        if "m" not in theta1:
            theta1["m"] = ctx.theta1()
        return theta1["m"]

    up_key = _key("update", theta0_hash, theta1_hash)
    step("update", up_key, [layout.UPDATE], UPDATE_FIELDS,
         lambda out: _write_update(ctx, get_theta1(), out / layout.UPDATE))
    post_key = _key("importance_post", theta1_hash, ctx.settings, cfg.ablation)
    step("importance_post", post_key, [layout.IMPORTANCE["post"], layout.LOSSES["post"]], IMPORTANCE_FIELDS,
         lambda out: _write_importance(_importance(ctx, get_theta1()), out / layout.IMPORTANCE["post"],
                                       out / layout.LOSSES["post"]))
    meta["settings"] = {**asdict(cfg), **ctx.settings, "eval_source": ctx.subset.eval_source,
                        "eval_size": ctx.subset.size, "n_heads": n}
    atomic_write_json(meta_path, meta)
    return timings


def _write_gradfisher(ctx: MeasureContext, path: Path) -> None:
    model = ctx.theta0()
    res = grad_fisher(ctx.for_compute(model), get_adapter(model), ctx.enc, ctx.data.task,
                      ctx.tok.pad_token_id, ctx.cfg.grad_batch_size, ctx.cfg.progress)
    atomic_write_jsonl(path, res.rows())


def _write_update(ctx: MeasureContext, theta1, path: Path) -> None:
    theta0 = ctx.theta0()
    adapter = get_adapter(theta0)
    w0 = qkvo_weights(theta0.float(), adapter)
    w1 = qkvo_weights(theta1.float(), adapter)
    atomic_write_jsonl(path, update_magnitude(w0, w1, adapter, theta0.config).rows())

