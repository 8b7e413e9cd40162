"""`headplast` command line: parses flags, builds a stage config, calls the library.

Every flag comes from a config dataclass field (headplast.cli.options), so flags and
configs cannot drift apart.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import warnings

from headplast.cli import analysis_cmds
from headplast.cli.options import add_config_args, config_from_args
from headplast.errors import HeadplastError
from headplast.measure.config import MeasureConfig
from headplast.train.config import TrainConfig

RUN_ID = ("task", "method", "seed", "lora_r", "output_root")  # what locates a run directory


def cmd_train(a) -> int:
    from headplast.steps.train_step import run_train

    out = run_train(config_from_args(TrainConfig, a))
    print(f"{'trained' if out.status == 'ran' else 'up to date (--force to redo)'}: {out.path}: {out.detail}")
    return 0


def cmd_measure(a) -> int:
    from headplast.report.lines import timings_line
    from headplast.steps.measure_step import run_measure
    from headplast.steps.train_step import run_id
    from headplast.store import layout

    run_dir = a.run_dir or layout.run_dir(a.output_root, run_id(config_from_args(TrainConfig, a)))
    out = run_measure(run_dir, config_from_args(MeasureConfig, a, "m_"), a.force)
    print(f"measured {out.path}: {timings_line(out.timings)}")
    return 0


def cmd_pipeline(a) -> int:
    from headplast.analysis.config import AnalysisConfig
    from headplast.steps.pipeline import PipelineConfig, run_pipeline
    from headplast.store import layout

    cfg = config_from_args(PipelineConfig, a, "p_", train=config_from_args(TrainConfig, a),
                           measure=config_from_args(MeasureConfig, a, "m_"),
                           analysis=config_from_args(AnalysisConfig, a, "s_"))
    out = run_pipeline(cfg)
    print("\n" + "=" * 60)
    for p in out["compare"]:  # the answer first, then where everything is
        m = json.loads((p / layout.COMPARE_METRICS).read_text())
        print(f"ANSWER ({m['task']}, seed {m['seed']}): does a head's importance before fine-tuning predict "
              "how much fine-tuning changes it?")
        print("\n".join(f"  {line}" for line in m["headline"]) + "\n")
    print(f"outputs under {cfg.train.output_root}/")
    for key in ("runs", "compare", "aggregate", "ranks"):
        for p in out[key]:
            print(f"  {key:9s} {p}")
    for p in out["compare"]:
        print(f"details: {p / layout.COMPARE_SUMMARY} (statistics, counter-examples, findings) and the figures beside it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from headplast.analysis.config import AnalysisConfig
    from headplast.steps.pipeline import PipelineConfig

    p = argparse.ArgumentParser(prog="headplast", description="Does how much an attention head matters "
                                "predict how much fine-tuning changes it?")
    p.add_argument("-v", "--verbose", action="store_true", help="log what each step does")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    p.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for a folder another headplast process is writing (default: as long "
                        "as it runs; 0: fail at once)")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="build theta0 and fine-tune (FFT or LoRA)")
    add_config_args(t, TrainConfig)
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("measure", help="importance (pre/post), gradient/Fisher, update magnitude")
    m.add_argument("run_dir", nargs="?", default=None, help="a run directory (or give --task/--method/...)")
    add_config_args(m, TrainConfig, only=RUN_ID, title="which run (without RUN_DIR)")
    add_config_args(m, MeasureConfig, dest_prefix="m_", title="measurement")
    m.add_argument("--force", action="store_true", help="recompute even if up to date")
    m.set_defaults(func=cmd_measure)

    analysis_cmds.register(sub)

    pl = sub.add_parser("pipeline", help="the guide's whole experiment: train, measure, plot, compare (+ "
                                         "aggregate over seeds, compare ranks)")
    add_config_args(pl, PipelineConfig, dest_prefix="p_", title="experiment")
    add_config_args(pl, TrainConfig, exclude=("task", "method", "seed", "lora_r", "lora_alpha", "force"),
                    title="training")
    add_config_args(pl, MeasureConfig, exclude=("eval_size", "eval_source"), dest_prefix="m_", title="measurement")
    add_config_args(pl, AnalysisConfig, dest_prefix="s_", title="statistics")
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
    from headplast.store import locks

    locks.set_timeout(args.lock_timeout)
    try:
        return args.func(args)
    except HeadplastError as e:
        if args.debug:
            raise
        return _error(e.problem, e.fix)
    except OSError as e:  # the file system refused: a user's problem, not a bug
        if args.debug or e.errno not in _FS_ERRORS:
            raise
        return _error(f"cannot write {e.filename or 'a file'}: {e.strerror}",
                      "choose a writable --output-root with free space (finished steps are only read)")
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("headplast: interrupted; finished steps are kept and the next run resumes", file=sys.stderr)
        return 130


_FS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _error(problem: str, fix: str | None) -> int:
    print(f"headplast: error: {problem}", file=sys.stderr)
    if fix:
        print(f"  fix: {fix}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
