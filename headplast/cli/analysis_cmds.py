"""Subcommands of the analysis side: plot, compare, aggregate, ranks."""

from __future__ import annotations

from headplast.analysis.config import AnalysisConfig
from headplast.cli.options import add_config_args, config_from_args
from headplast.steps.across_steps import AggregateConfig, RanksConfig
from headplast.steps.compare_step import CompareConfig
from headplast.steps.report_step import ReportConfig
from headplast.train.config import TrainConfig


def _analysis(a) -> AnalysisConfig:
    return config_from_args(AnalysisConfig, a, "s_")


def cmd_plot(a) -> int:
    from headplast.steps.analyse_step import run_analyse
    from headplast.steps.runs import resolve_task
    from headplast.store import layout

    d = a.run_dir or layout.run_dir(a.output_root, layout.RunId.from_label(
        resolve_task(a.output_root, a.task), a.method_label, a.seed))
    out = run_analyse(d, _analysis(a), a.force)
    print(f"analysed {out.path}{' (up to date)' if out.status == 'skipped' else ''}: {out.detail}")
    return 0


def cmd_compare(a) -> int:
    from headplast.steps.compare_step import run_compare
    from headplast.store import layout

    labels = a.labels if a.labels is not None else ("FFT", layout.label_of("lora", a.lora_r))
    out = run_compare(config_from_args(CompareConfig, a, labels=tuple(labels), analysis=_analysis(a)))
    print((out.path / layout.COMPARE_SUMMARY).read_text())
    print(f"comparison written to {out.path}")
    return 0


def cmd_aggregate(a) -> int:
    from headplast.steps.across_steps import run_aggregate

    out = run_aggregate(config_from_args(AggregateConfig, a, analysis=_analysis(a)))
    print((out.path / "summary.txt").read_text())
    print(f"aggregate written to {out.path}")
    return 0


def cmd_ranks(a) -> int:
    from headplast.steps.across_steps import run_ranks

    out = run_ranks(config_from_args(RanksConfig, a, analysis=_analysis(a)))
    print(f"rank comparison written to {out.path}")
    return 0


def cmd_report(a) -> int:
    from headplast.report.lines import report_line
    from headplast.steps.report_step import run_report

    r = run_report(config_from_args(ReportConfig, a), a.force)
    print(f"report {'up to date' if r.status == 'skipped' else 'written'}: {report_line(r.path)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("plot", help="heads.csv, stats.json, cases.json and figures of one run")
    p.add_argument("run_dir", nargs="?", default=None)
    add_config_args(p, TrainConfig, only=("task", "seed", "output_root", "force"), title="which run (without RUN_DIR)")
    p.add_argument("--method-label", default="FFT", help="FFT or LoRA_r<r> (without RUN_DIR)")
    add_config_args(p, AnalysisConfig, dest_prefix="s_", title="statistics")
    p.set_defaults(func=cmd_plot)

    c = sub.add_parser("compare", help="FFT vs LoRA for one task and seed (COMPARE/<task>/seed<seed>/)")
    add_config_args(c, CompareConfig)
    c.set_defaults(labels=None)
    c.add_argument("--lora-r", type=int, default=8, help="compare FFT with LoRA_r<this> (without --labels)")
    add_config_args(c, AnalysisConfig, dest_prefix="s_", title="statistics")
    c.set_defaults(func=cmd_compare)

    g = sub.add_parser("aggregate", help="statistics across seeds (MULTI_SEED/)")
    add_config_args(g, AggregateConfig)
    add_config_args(g, AnalysisConfig, dest_prefix="s_", title="statistics")
    g.set_defaults(func=cmd_aggregate)

    r = sub.add_parser("ranks", help="statistics across LoRA ranks (RANK_COMPARISON/)")
    add_config_args(r, RanksConfig)
    add_config_args(r, AnalysisConfig, dest_prefix="s_", title="statistics")
    r.set_defaults(func=cmd_ranks)

    h = sub.add_parser("report", help="one self-contained interactive HTML file of everything under an output root")
    add_config_args(h, ReportConfig)
    h.add_argument("--force", action="store_true", help="rewrite it even if nothing it shows changed")
    h.set_defaults(func=cmd_report)
