"""The one place that knows the run-directory layout (the guide's layout, same file names)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from headplast.errors import HeadplastError

CKPT_INIT = "ckpt_init"
CKPT_FINAL = "ckpt_final"
RUN_CONFIG = "run_config.json"
EVAL_SUBSET = "eval_subset.json"
IMPORTANCE = {"pre": "importance_pre.jsonl", "post": "importance_post.jsonl"}
LOSSES = {"pre": "losses_pre.npy", "post": "losses_post.npy"}  # [N, 1 + L*H] per-example losses
GRADFISHER = "gradfisher_pre.jsonl"
UPDATE = "update.jsonl"
MEASURE_META = "measure_meta.json"
HEADS_CSV = "heads.csv"
STATS = "stats.json"
CASES = "cases.json"
RUN_FIGURES = ("fig_I_vs_U.png", "fig_I_vs_G.png", "fig_stats.png", "fig_Ipre_vs_Ipost.png",
               "fig_Ipost_corrs.png", "fig_heatmaps.png")


@dataclass(frozen=True)
class RunId:
    task: str  # canonical task name
    method: str  # "fft" or "lora"
    seed: int
    r: int | None = None  # LoRA rank

    @property
    def label(self) -> str:
        """'FFT' or 'LoRA_r8', as the guide's make_plots.sh takes it."""
        return "FFT" if self.method == "fft" else f"LoRA_r{self.r}"


def parse_label(label: str) -> tuple[str, int | None]:
    """'FFT' -> ('fft', None); 'LoRA_r8' / 'lora8' / 'LoRA-r8' -> ('lora', 8)."""
    s = label.strip()
    if s.lower() == "fft":
        return "fft", None
    m = re.fullmatch(r"(?i)lora[_-]?r?(\d+)", s)
    if m:
        return "lora", int(m.group(1))
    raise HeadplastError(f"unknown method label '{label}'", "use FFT or LoRA_r<rank>, e.g. LoRA_r8")


def run_dir(root: str | Path, run: RunId) -> Path:
    if run.method == "fft":
        return Path(root) / "FFT" / run.task / f"seed{run.seed}"
    if run.method == "lora":
        if run.r is None:
            raise HeadplastError("a LoRA run needs its rank", "pass --lora-r")
        return Path(root) / "LoRA" / run.task / f"seed{run.seed}_r{run.r}"
    raise HeadplastError(f"unknown method '{run.method}'", "use --method fft or --method lora")


def root_of(run: str | Path) -> Path:
    """The output root a run directory lives under (<root>/<FFT|LoRA>/<task>/<run>)."""
    return Path(run).resolve().parents[2]


def shared_dir(root: str | Path, kind: str, task: str, key: str) -> Path:
    """Content-addressed store for things several runs share (theta0, pre measurements)."""
    return Path(root) / "_shared" / kind / task / key


def compare_dir(root: str | Path, task: str, seed: int) -> Path:
    return Path(root) / "COMPARE" / task / f"seed{seed}"


def multi_seed_dir(root: str | Path) -> Path:
    return Path(root) / "MULTI_SEED"


def rank_dir(root: str | Path) -> Path:
    return Path(root) / "RANK_COMPARISON"
