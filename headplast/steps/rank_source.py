"""Guided LoRA ranks (`--rank-by`, `--rank-from`): the head scores of a finished run, turned into a
rank per adapted module by headplast.train.lora.allocate_ranks."""

from __future__ import annotations

from pathlib import Path

from headplast.errors import HeadplastError
from headplast.measure import registry
from headplast.steps.runs import measurement_arrays, run_info
from headplast.store import records
from headplast.train.config import TrainConfig
from headplast.train.lora import ROUNDING, allocate_ranks, module_scores, module_shapes


def rank_source(cfg: TrainConfig, task: str) -> dict | None:
    """What guides a run's LoRA ranks (None: uniform), checked before anything is trained: the
    source run is measured, of the same task and model, and has the score."""
    if not cfg.guided:
        return None
    if not cfg.rank_from:
        raise HeadplastError(f"--rank-by {cfg.rank_by} needs --rank-from RUN_DIR (whose heads' scores guide the "
                             "ranks)", "pass --rank-from <a trained and measured run of this task, e.g. "
                             "outputs/FFT/SST-2/seed1>")
    d = Path(cfg.rank_from).resolve()
    m = next(m for m in registry.MEASUREMENTS if cfg.rank_by in m.head_columns)
    measurement_arrays(d, m.name)  # measured, and the file is as its step wrote it
    info = run_info(d)
    model = cfg.model or "default"
    if info["task"] != task or info["model"] != model:
        raise HeadplastError(f"--rank-from {d} is a run of task {info['task']} on model {info['model']}; this run "
                             f"trains task {task} on {model}", "give a run of the same task and model")
    return {"by": cfg.rank_by, "from": str(d), "source_run": info["label"], "source_seed": info["seed"],
            "measurement": m.name, "hashes": records.read_record(d, m.name)["outputs"]}


def guided_ranks(source: dict, model, adapter, targets: list[str], r: int) -> dict:
    """{module: rank} for `targets` of `model`, with how they were chosen (for run_config.json)."""
    heads = measurement_arrays(source["from"], source["measurement"])
    L, H = adapter.num_layers(model.config), adapter.num_heads(model.config)
    if heads[source["by"]].shape != (L, H):
        raise HeadplastError(f"--rank-from {source['from']} has {heads[source['by']].shape} heads, this model "
                             f"{(L, H)}", "give a run of the same model")
    scores = module_scores(source["by"], heads, adapter, targets, L)
    shapes = module_shapes(model, targets)
    ranks = allocate_ranks(scores, shapes, r)
    return {**source, "ranks": ranks, "module_scores": scores, "rounding": ROUNDING,
            "lora_parameters": sum(k * sum(shapes[n]) for n, k in ranks.items()),
            "uniform_lora_parameters": sum(r * sum(shapes[n]) for n in targets)}
