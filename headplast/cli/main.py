"""`headplast` command line: parses flags, builds a stage config, calls the library."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from headplast.errors import HeadplastError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-root", default="outputs", help="root under which runs are found and written")


def _add_run_id(p, seed_default=1) -> None:
    p.add_argument("--task", default="RTE", help="GLUE task (any case, dash optional) or a custom name")
    p.add_argument("--method", default="fft", type=str.lower, choices=["fft", "lora"])
    p.add_argument("--seed", type=int, default=seed_default)
    p.add_argument("--lora-r", type=int, default=8)


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None, help="hub id or local directory (default: embedded MiniLM-L6)")
    g.add_argument("--data-dir", default=None, help="GLUE-format folder: DIR/<TASK>/train.tsv, dev.tsv")
    g.add_argument("--data-source", default="auto", choices=["auto", "local", "bundled", "hub"])
    g.add_argument("--train-file", default=None, help="custom CSV/TSV/JSONL training file")
    g.add_argument("--validation-file", default=None)
    g.add_argument("--text-columns", default="sentence1,sentence2", help="custom files: 1 or 2 text columns")
    g.add_argument("--label-column", default="label")
    g.add_argument("--max-train-samples", type=int, default=None)
    g.add_argument("--max-length", type=int, default=256)
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-alpha", type=float, default=16.0)
    g.add_argument("--lora-dropout", type=float, default=0.1)
    g.add_argument("--lora-targets", default="attn",
                   help="attn (Q,K,V,O; default), attn,ffn, q,v, or explicit full module names")
    g = p.add_argument_group("optimisation")
    g.add_argument("--head-init", default="probe", choices=["probe", "random"])
    g.add_argument("--num-epochs", type=float, default=3.0)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--learning-rate", type=float, default=None, help="default 2e-5 (FFT), 2e-3 (LoRA)")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=float, default=0.06)
    g.add_argument("--eval-source", default="validation", choices=["validation", "holdout", "train"])
    g.add_argument("--eval-size", type=int, default=1024)
    p.add_argument("--force", action="store_true", help="redo even if outputs exist")


def train_config(a, method=None, seed=None, r=None, alpha=None):
    from headplast.train.config import TrainConfig
    from headplast.train.prepare import task_name

    return TrainConfig(
        task=task_name(a.task, bool(a.train_file)), method=method or a.method,
        seed=a.seed if seed is None else seed, model=a.model,
        output_root=a.output_root, data_dir=a.data_dir, data_source=a.data_source, train_file=a.train_file,
        validation_file=a.validation_file, text_columns=tuple(a.text_columns.split(",")),
        label_column=a.label_column, lora_r=r or a.lora_r, lora_alpha=alpha or a.lora_alpha,
        lora_dropout=a.lora_dropout, lora_targets=a.lora_targets, head_init=a.head_init,
        num_epochs=a.num_epochs, batch_size=a.batch_size, learning_rate=a.learning_rate,
        weight_decay=a.weight_decay, warmup_ratio=a.warmup_ratio, max_length=a.max_length,
        max_train_samples=a.max_train_samples, eval_source=a.eval_source, eval_size=a.eval_size,
        force=a.force)


def add_measure_args(p: argparse.ArgumentParser, with_eval=True) -> None:
    g = p.add_argument_group("measurement")
    if with_eval:
        g.add_argument("--eval-size", type=int, default=None, help="default: as recorded at training (1024)")
        g.add_argument("--eval-source", default=None, choices=["validation", "holdout", "train"])
    g.add_argument("--ablation", default="zero", choices=["zero", "mean"])
    g.add_argument("--measure-batch-size", *(["--batch-size"] if with_eval else []), dest="measure_batch_size",
                   type=int, default=32, help="examples per ablation batch")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def measure_config(a, run_dir):
    from headplast.orchestration.measure_step import MeasureConfig

    return MeasureConfig(run_dir=str(run_dir), eval_size=a.eval_size, eval_source=a.eval_source,
                         ablation=a.ablation, batch_size=a.measure_batch_size, dtype=a.dtype, device=a.device,
                         force=a.force)


def resolve_run_dir(a):
    from headplast.orchestration import layout
    from headplast.train.prepare import task_name

    if getattr(a, "run_dir", None):
        return a.run_dir
    custom = bool(getattr(a, "train_file", None))
    run = layout.RunId(task_name(a.task, custom), a.method, a.seed, a.lora_r if a.method == "lora" else None)
    return layout.run_dir(a.output_root, run)


def cmd_train(a) -> int:
    from headplast.train.run import run_train

    out = run_train(train_config(a))
    _print_run_summary(out)
    return 0


def _print_run_summary(out) -> None:
    import json

    rc = json.loads((out / "run_config.json").read_text())
    v = rc["validation"]
    print(f"trained {rc['label']} {rc['run']['task']} seed {rc['run']['seed']}: {v['theta0']['metric_name']} "
          f"theta0 {v['theta0']['metric']:.4f} -> theta1 {v['theta1']['metric']:.4f} "
          f"(majority {v['majority_baseline']:.4f}{', COLLAPSED' if rc['collapsed'] else ''}) "
          f"in {rc['seconds']['train']:.0f}s -> {out}")


def cmd_measure(a) -> int:
    from headplast.orchestration.measure_step import run_measure

    run_dir = resolve_run_dir(a)
    timings = run_measure(measure_config(a, run_dir))
    print(f"measured {run_dir}: " + ", ".join(f"{k} {v}{'s' if isinstance(v, float) else ''}"
                                              for k, v in timings.items()))
    return 0


def cmd_pipeline(a) -> int:
    from dataclasses import replace

    from headplast.cli.analysis_cmds import analysis_config
    from headplast.orchestration.pipeline import PipelineConfig, run_pipeline

    a.method, a.seed, a.task, a.lora_r = "fft", a.seeds[0], a.tasks[0], a.ranks[0]
    tcfg = train_config(a, alpha=16.0)
    mcfg = replace(measure_config(a, ""), eval_size=None, eval_source=None)
    from headplast.train.prepare import task_name

    tasks = tuple(task_name(t, bool(a.train_file)) for t in a.tasks)
    cfg = PipelineConfig(tcfg, mcfg, analysis_config(a), tasks, tuple(a.seeds), tuple(a.methods), tuple(a.ranks), a.lora_alpha, a.force)
    out = run_pipeline(cfg)
    print("\n" + "=" * 60)
    print(f"done: outputs under {a.output_root}/")
    for key in ("runs", "compare", "aggregate", "ranks"):
        for p in out[key]:
            if p is not None:
                print(f"  {key:9s} {p}")
    for p in out["compare"]:
        if p is not None:
            print("\n" + (p / "compare_summary.txt").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headplast", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="build theta0 and fine-tune (FFT or LoRA)")
    _add_run_id(t)
    _add_common(t)
    add_train_args(t)
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("measure", help="importance (pre/post), gradient/Fisher, update magnitude")
    m.add_argument("run_dir", nargs="?", default=None, help="a run directory (or give --task/--method/...)")
    _add_run_id(m)
    _add_common(m)
    add_measure_args(m)
    m.add_argument("--force", action="store_true")
    m.set_defaults(func=cmd_measure)

    from headplast.cli import analysis_cmds

    analysis_cmds.register(sub, _add_common)

    pl = sub.add_parser("pipeline", help="the guide's whole experiment: train, measure, plot, compare (+ "
                                         "aggregate over seeds, compare ranks)")
    pl.add_argument("--tasks", "--task", nargs="+", default=["RTE"])
    pl.add_argument("--seeds", "--seed", nargs="+", type=int, default=[1])
    pl.add_argument("--methods", nargs="+", type=str.lower, default=["fft", "lora"], choices=["fft", "lora"])
    pl.add_argument("--ranks", "--lora-r", nargs="+", type=int, default=[8])
    _add_common(pl)
    add_train_args(pl)
    pl.set_defaults(lora_alpha=None)
    add_measure_args(pl, with_eval=False)
    analysis_cmds.add_analysis_args(pl)
    pl.set_defaults(func=cmd_pipeline)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # e.g. the "classifier MISSING" load report of every θ0
        hf_logging.disable_progress_bar()  # per-file loading bars; our steps have their own
    try:
        return args.func(args)
    except HeadplastError as e:
        print(f"headplast: error: {e.problem}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
