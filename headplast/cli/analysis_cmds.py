"""Subcommands of the analysis side: plot, compare, aggregate, ranks."""

from __future__ import annotations

from pathlib import Path


def add_analysis_args(p) -> None:
    g = p.add_argument_group("statistics")
    g.add_argument("--top-k", type=int, default=20)
    g.add_argument("--top-quantile", type=float, default=0.2, help="'important'/'plastic': top fraction")
    g.add_argument("--bottom-quantile", type=float, default=0.5, help="'static'/'unimportant': bottom fraction")
    g.add_argument("--n-boot", type=int, default=2000)
    g.add_argument("--n-perm", type=int, default=1000)
    g.add_argument("--stats-seed", type=int, default=0)


def analysis_config(a):
    from headplast.analysis.run_analysis import AnalysisConfig

    return AnalysisConfig(a.top_k, a.top_quantile, a.bottom_quantile, a.n_boot, a.n_perm, a.stats_seed)


def _run_dir_from(a) -> Path:
    from headplast.orchestration import layout
    from headplast.train.prepare import task_name

    if a.run_dir:
        return Path(a.run_dir)
    method, r = layout.parse_label(a.method_label)
    return layout.run_dir(a.output_root, layout.RunId(task_name(a.task, False), method, a.seed, r))


def cmd_plot(a) -> int:
    from headplast.analysis.run_analysis import write_run_analysis

    d = _run_dir_from(a)
    st = write_run_analysis(d, analysis_config(a))
    p = st["pairs"].get("I_pre~U", {})
    print(f"analysed {d}: rho(I_pre, U) = {p.get('spearman', float('nan')):.3f} "
          f"CI {p.get('ci95')}, top-{st['k']} overlap {p.get('top_k', {}).get('overlap')}")
    return 0


def cmd_compare(a) -> int:
    from headplast.orchestration.compare_step import CompareConfig, run_compare
    from headplast.train.prepare import task_name

    labels = tuple(a.labels) if a.labels else ("FFT", f"LoRA_r{a.lora_r}")
    out = run_compare(CompareConfig(task_name(a.task, False), a.seed, labels, a.output_root, a.out_dir,
                                    analysis_config(a)))
    print((out / "compare_summary.txt").read_text())
    print(f"comparison written to {out}")
    return 0


def cmd_aggregate(a) -> int:
    from headplast.orchestration.across_steps import AggregateConfig, run_aggregate
    from headplast.train.prepare import task_name

    out = run_aggregate(AggregateConfig(task_name(a.task, False), tuple(a.methods), tuple(a.seeds), a.output_root,
                                        a.out_dir, a.include_collapsed, analysis_config(a)))
    print((out / "summary.txt").read_text())
    print(f"aggregate written to {out}")
    return 0


def cmd_ranks(a) -> int:
    from headplast.orchestration.across_steps import RanksConfig, run_ranks
    from headplast.train.prepare import task_name

    out = run_ranks(RanksConfig(task_name(a.task, False), a.seed, tuple(a.ranks), a.output_root, a.out_dir,
                                analysis_config(a)))
    print(f"rank comparison written to {out}")
    return 0


def register(sub, add_common) -> None:
    p = sub.add_parser("plot", help="heads.csv, stats.json, cases.json and figures of one run")
    p.add_argument("run_dir", nargs="?", default=None)
    p.add_argument("--task", default="RTE")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--method-label", default="FFT", help="FFT or LoRA_r<r> (used without run_dir)")
    add_common(p)
    add_analysis_args(p)
    p.set_defaults(func=cmd_plot)

    c = sub.add_parser("compare", help="FFT vs LoRA for one task and seed (COMPARE/<task>/seed<seed>/)")
    c.add_argument("--task", default="RTE")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--lora-r", type=int, default=8)
    c.add_argument("--labels", nargs=2, default=None, help="two run labels, e.g. FFT LoRA_r8 (default)")
    c.add_argument("--out-dir", default=None, help="default: <output-root>/COMPARE/<task>/seed<seed>")
    add_common(c)
    add_analysis_args(c)
    c.set_defaults(func=cmd_compare)

    g = sub.add_parser("aggregate", help="statistics across seeds (MULTI_SEED/)")
    g.add_argument("--methods", "--method", nargs="+", default=["FFT", "LoRA_r8"], help="labels: FFT LoRA_r8 ...")
    g.add_argument("--task", default="RTE")
    g.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    g.add_argument("--out-dir", "--out_dir", default=None, help="default: <output-root>/MULTI_SEED")
    g.add_argument("--include-collapsed", action="store_true")
    add_common(g)
    add_analysis_args(g)
    g.set_defaults(func=cmd_aggregate)

    r = sub.add_parser("ranks", help="statistics across LoRA ranks (RANK_COMPARISON/)")
    r.add_argument("--task", default="RTE")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--ranks", nargs="+", type=int, default=[4, 8, 16, 32])
    r.add_argument("--out-dir", "--out_dir", default=None, help="default: <output-root>/RANK_COMPARISON")
    add_common(r)
    add_analysis_args(r)
    r.set_defaults(func=cmd_ranks)
