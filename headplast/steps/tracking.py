"""Experiment trackers (`--report-to tensorboard|wandb|mlflow`): training is logged by Trainer;
each run's headline measurements are logged to the same tracker run as summary metrics when the
run is analysed, so sweeps can be compared where researchers already look."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

from headplast.analysis.names import pair_name, split_name
from headplast.errors import HeadplastError
from headplast.store import layout
from headplast.train.config import TRACKER_PACKAGES

log = logging.getLogger("headplast")


def check_tracker(name: str) -> None:
    pkg = TRACKER_PACKAGES.get(name)
    if pkg and importlib.util.find_spec(pkg) is None:
        raise HeadplastError(f"--report-to {name} needs the {pkg} package, which is not installed",
                             f"pip install {pkg} (or use --report-to none)")


def tracker_run_name(run: layout.RunId) -> str:
    return f"{run.task}/{run.label}/seed{run.seed}"


def tracker_record(name: str, run: layout.RunId) -> dict:
    """What run_config.json keeps to log the run's summary to the same tracker run later."""
    rec = {"report_to": name, "run_name": tracker_run_name(run)}
    if name == "tensorboard":
        rec["log_dir"] = layout.TENSORBOARD_DIR
    elif name == "wandb":
        import wandb

        rec["id"] = wandb.run.id if wandb.run else None
        if wandb.run:
            wandb.run.finish()
    elif name == "mlflow":
        import mlflow

        last = mlflow.last_active_run()
        rec["id"] = last.info.run_id if last else None
    return rec


def summary_metrics(stats: dict, rc: dict) -> dict[str, float]:
    """Flat {name: value}: every correlation with its 95% CI, the reliabilities, validation metrics."""
    out = {}
    for pair, p in stats["pairs"].items():
        name = pair_name(*split_name(pair)[1:], "rho")
        out[name] = p["spearman"]
        out[f"{name}/ci95_low"], out[f"{name}/ci95_high"] = p["ci95"]
    for name, r in stats.get("reliability", {}).items():
        out[f"reliability/{name}"] = r.get("reliability")
    v = rc["validation"]
    out.update({"validation/theta0": v["theta0"]["metric"], "validation/theta1": v["theta1"]["metric"],
                "validation/majority_baseline": v["majority_baseline"]})
    return {k: float(x) for k, x in out.items() if x is not None and math.isfinite(x)}


def mlflow_name(name: str) -> str:
    """A metric name as MLflow accepts it (letters, digits, _ - . / : and spaces):
    'rho(x,y)/ci95_low' -> 'rho_x_vs_y/ci95_low'."""
    return name.replace("(", "_").replace(",", "_vs_").replace(")", "")


def log_summary(run_dir: Path, rc: dict, stats: dict) -> None:
    """Log the run's summary metrics to the tracker it was trained with (nothing for none)."""
    rec = rc.get("tracking") or {}
    name = rec.get("report_to", "none")
    if name == "none":
        return
    check_tracker(name)
    metrics = summary_metrics(stats, rc)
    step = int(rc.get("train_steps", 0))
    if name == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(run_dir / rec["log_dir"])) as w:
            for k, v in metrics.items():
                w.add_scalar(f"headplast/{k}", v, step)
    elif name == "wandb":
        import wandb

        with wandb.init(id=rec.get("id"), resume="allow", name=rec["run_name"]) as r:
            r.summary.update(metrics)
    elif name == "mlflow":
        import mlflow

        with mlflow.start_run(run_id=rec.get("id"), run_name=None if rec.get("id") else rec["run_name"]):
            mlflow.log_metrics({mlflow_name(k): v for k, v in metrics.items()}, step=step)
    log.info("logged %d summary metrics of %s to %s", len(metrics), run_dir, name)
