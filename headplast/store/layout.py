"""The one place that knows the run-directory layout (the guide's layout, same file names).

Per-head measurement files are named by their declarations (headplast.measure.registry);
everything else a run, a comparison or an aggregate holds is named here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from headplast.errors import HeadplastError

CKPT_INIT = "ckpt_init"
CKPT_FINAL = "ckpt_final"
RUN_CONFIG = "run_config.json"
EVAL_SUBSET = "eval_subset.json"
MEASURE_META = "measure_meta.json"
THETA0_INFO = "theta0.json"  # in a shared theta0 entry
ADAPTER_META = "headplast_theta.json"  # in ckpt_final: which theta0 it was trained from
PIPELINE_LOG = "pipeline_log.json"
TENSORBOARD_DIR = "tensorboard"  # in a run trained with --report-to tensorboard: its event files
HEADS_CSV = "heads.csv"
STATS = "stats.json"
CASES = "cases.json"
RUN_FIGURES = ("fig_I_vs_U.png", "fig_I_vs_G.png", "fig_stats.png", "fig_Ipre_vs_Ipost.png",
               "fig_Ipost_corrs.png", "fig_heatmaps.png", "fig_effect.png", "fig_change_measures.png")
COMPARE_FIGURES = ("compare_I_vs_U.png", "compare_stats.png", "compare_update_dist.png", "compare_headwise.png",
                   "compare_subspace.png")
COMPARE_METRICS = "compare_metrics.json"
COMPARE_SUMMARY = "compare_summary.txt"
AGGREGATE_METRICS = "aggregate_metrics.json"
AGGREGATE_FILES = ("summary.txt", AGGREGATE_METRICS, "runs_table.csv", "runs_table.parquet",
                   "multi_seed_stats.png")
RANK_FILES = ("rank_metrics.json", "rank_table.csv", "rank_stats.png", "rank_update_dist.png")


FIGURE_FORMATS = ("png", "pdf", "svg")


def with_format(files, fmt: str) -> tuple[str, ...]:
    """File names with the figures (*.png above) in format `fmt` (png, pdf or svg)."""
    return tuple(f[:-4] + "." + fmt if f.endswith(".png") else f for f in files)


def label_of(method: str, r: int | None = None) -> str:
    """'FFT' or 'LoRA_r8', as the guide's make_plots.sh takes it."""
    return "FFT" if method == "fft" else f"LoRA_r{r}"


def parse_label(label: str) -> tuple[str, int | None, str | None]:
    """(method, rank, rank_by) of a run's label, the inverse of RunId.label: 'FFT' -> ('fft', None,
    None); 'LoRA_r8' / 'lora8' / 'LoRA-r8' -> ('lora', 8, None); 'LoRA_r8_by_I_pre' -> ('lora', 8,
    'I_pre'), LoRA ranks guided by that head score (its name kept as written)."""
    s = label.strip()
    if s.lower() == "fft":
        return "fft", None, None
    m = re.fullmatch(r"(?i:lora[_-]?r?)(\d+)(?:_by_(\w+))?", s)
    if m:
        by = m.group(2)
        return "lora", int(m.group(1)), None if by in (None, "uniform") else by
    raise HeadplastError(f"unknown method label '{label}'",
                         "use FFT, LoRA_r<rank> or LoRA_r<rank>_by_<score>, e.g. LoRA_r8 or LoRA_r8_by_I_pre")


@dataclass(frozen=True)
class RunId:
    task: str  # canonical task name
    method: str  # "fft" or "lora"
    seed: int
    r: int | None = None  # LoRA rank
    rank_by: str | None = None  # LoRA ranks per module guided by this head score (None: uniform)

    @property
    def label(self) -> str:
        return label_of(self.method, self.r) + (f"_by_{self.rank_by}" if self.rank_by else "")

    @classmethod
    def from_label(cls, task: str, label: str, seed: int) -> "RunId":
        method, r, rank_by = parse_label(label)
        return cls(task, method, seed, r, rank_by)


def run_dir(root: str | Path, run: RunId) -> Path:
    if run.method == "fft":
        return Path(root) / "FFT" / run.task / f"seed{run.seed}"
    if run.method == "lora":
        if run.r is None:
            raise HeadplastError("a LoRA run needs its rank", "pass --lora-r")
        guided = f"_by_{run.rank_by}" if run.rank_by else ""  # same LoRA parameters, other ranks per module
        return Path(root) / "LoRA" / run.task / f"seed{run.seed}_r{run.r}{guided}"
    raise HeadplastError(f"unknown method '{run.method}'", "use --method fft or --method lora")


def root_of(run: str | Path) -> Path:
    """The output root a run directory lives under (<root>/<FFT|LoRA>/<task>/<run>)."""
    return Path(run).resolve().parents[2]


def shared_dir(root: str | Path, kind: str, task: str, key: str) -> Path:
    """Content-addressed store for things several runs share (theta0, pre measurements)."""
    return Path(root) / "_shared" / kind / task / key


def compare_dir(root: str | Path, task: str, seed: int, rank: int | None = None) -> Path:
    """The guide's COMPARE/<task>/seed<seed>/; with a rank (an experiment with several LoRA
    ranks compares FFT with each), COMPARE/<task>/seed<seed>_r<rank>/."""
    return Path(root) / "COMPARE" / task / (f"seed{seed}" if rank is None else f"seed{seed}_r{rank}")


def multi_seed_dir(root: str | Path, task: str | None = None) -> Path:
    """The guide's MULTI_SEED/; MULTI_SEED/<task>/ when one experiment covers several tasks."""
    return Path(root) / "MULTI_SEED" / (task or "")


def rank_dir(root: str | Path, task: str | None = None, seed: int | None = None) -> Path:
    """The guide's RANK_COMPARISON/ (one task, one seed); RANK_COMPARISON/<task>/seed<seed>/ when one
    experiment compares ranks for several tasks or seeds."""
    return Path(root) / "RANK_COMPARISON" / (task or "") / ("" if seed is None else f"seed{seed}")


SWEEP_DIR = "_sweep"  # a sweep's bookkeeping under the output root: one folder per job, engine logs
SWEEP_CONFIG = "sweep.json"  # the last sweep started under a root: what `sweep --status` reports on
JOB_STATE = "state.json"
JOB_LOG = "log.txt"


def sweep_dir(root: str | Path) -> Path:
    return Path(root) / SWEEP_DIR


def job_dir(root: str | Path, name: str) -> Path:
    """<root>/_sweep/jobs/<job name>/: the job's state.json and log.txt."""
    return sweep_dir(root) / "jobs" / name


def engine_log_dir(root: str | Path, engine: str) -> Path:
    """Where an engine keeps its own per-job files (submitit's scripts and logs for SLURM)."""
    return sweep_dir(root) / engine
