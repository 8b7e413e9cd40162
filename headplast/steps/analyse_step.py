"""The analyse step of a run (`headplast plot`): heads.csv, stats.json, cases.json, figures."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from headplast.analysis.config import AnalysisConfig
from headplast.analysis.interactions import interactions
from headplast.analysis.run_analysis import analyse
from headplast.measure import registry
from headplast.plotting.run_plots import run_figures
from headplast.report.lines import rho_line
from headplast.steps import versions
from headplast.steps.outcome import Outcome, recorded_step
from headplast.steps.runs import (input_hashes, kv_group_size, load_halves, load_heads, load_joint, load_per_example,
                                  read_stats, run_info)
from headplast.steps.tracking import log_summary
from headplast.store import layout
from headplast.store.io import atomic_write_json, atomic_write_text, read_json


log = logging.getLogger(__name__)


def outputs(cfg: AnalysisConfig) -> tuple[str, ...]:
    return (layout.HEADS_CSV, layout.STATS, layout.CASES, *layout.with_format(layout.RUN_FIGURES, cfg.figure_format))


def analyse_key(run_dir: Path, cfg: AnalysisConfig) -> str:
    return versions.key("analyse", asdict(cfg), input_hashes(run_dir))


def run_analyse(run_dir: str | Path, cfg: AnalysisConfig = AnalysisConfig(), force: bool = False) -> Outcome:
    d = Path(run_dir)
    key = analyse_key(d, cfg)
    return recorded_step(d, "analyse", key, outputs(cfg), lambda: write_analysis(d, cfg), force,
                         lambda: rho_line(read_stats(d)))


def write_analysis(d: Path, cfg: AnalysisConfig) -> None:
    df, st, cases = analysed(d, cfg)
    info = run_info(d)
    st["run"] = info
    atomic_write_text(d / layout.HEADS_CSV, df.to_csv(index=False))
    atomic_write_json(d / layout.STATS, st)
    atomic_write_json(d / layout.CASES, cases)
    run_figures(df, st, f"{info['label']} {info['task']} seed {info['seed']}", d, cfg.figure_format)
    log_summary(d, read_json(d / layout.RUN_CONFIG), st)


def analysed(d: Path, cfg: AnalysisConfig) -> tuple:
    """(heads table, stats, cases) of a measured run, computed from its files."""
    df = load_heads(d)
    G = kv_group_size(d)
    if G is None:
        log.warning("%s: neither run_config.json nor ckpt_init says how many query heads share a K/V head; "
                    "no statistics over K/V groups (stats.json kv_groups)", d)
    st, cases = analyse(df, registry.stat_pairs(), load_per_example(d), cfg, load_halves(d), G or 1)
    if G is None:
        st["kv_groups"] = {"unknown": "the group size is recorded in run_config.json and theta0's config, both gone"}
    joint = load_joint(d)
    if joint is not None:  # do the heads' update effects add up? (measured before update_joint existed: not said)
        st["interactions"] = interactions(*joint)
    return df, st, cases
