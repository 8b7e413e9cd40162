"""`headplast` command line: parses flags, builds a stage config, calls the library.

Every flag comes from a config dataclass field (headplast.cli.options), so flags and
configs cannot drift apart.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from headplast.cli import analysis_cmds
from headplast.cli.options import add_config_args, config_from_args
from headplast.errors import HeadplastError
from headplast.measure.config import MeasureConfig
from headplast.train.config import TrainConfig

RUN_ID = ("task", "method", "seed", "lora_r", "rank_by", "output_root")  # what locates a run directory


def cmd_train(a) -> int:
    from headplast.steps.train_step import run_train

    out = run_train(config_from_args(TrainConfig, a))
    print(f"{'trained' if out.status == 'ran' else 'up to date (--force to redo)'}: {out.path}: {out.detail}")
    return 0


def cmd_measure(a) -> int:
    from headplast.measure.shard import launched
    from headplast.report.lines import timings_line
    from headplast.steps.measure_step import run_measure
    from headplast.steps.train_step import run_id
    from headplast.store import layout

    run_dir = a.run_dir or layout.run_dir(a.output_root, run_id(config_from_args(TrainConfig, a)))
    with launched(device=a.m_device) as shard:  # torchrun / accelerate launch: heads split across the processes
        out = run_measure(run_dir, config_from_args(MeasureConfig, a, "m_"), a.force)
    if shard.leader:
        split = f" ({shard.world} processes)" if shard.world > 1 else ""
        print(f"measured {out.path}{split}: {timings_line(out.timings)}")
    return 0


def cmd_check_overlap(a) -> int:
    from headplast.steps.overlap_step import check_overlap

    r = check_overlap(a.run_dir)
    print(f"{r['run']}: {r['any']} of {r['examples']} measured examples ({r['eval_source']}, {r['split']} split) "
          f"overlap the {r['training_examples']} training examples ({100 * r['fraction']:.1f}%)")
    print(f"  rule: {r['rule']}")
    print("  " + ", ".join(f"{k.replace('_', ' ')}: {r[k]}" for k in ("contained_in_training", "contains_training")
                           + tuple(k for k in r if k.startswith("shares_"))))
    for t in r["examples_overlapping"]:
        print(f"  e.g. {t[:120]}")
    if r["matches_record"] is False:
        print("  note: differs from the overlap recorded in eval_subset.json (the data changed since it was measured)")
    return 0 if r["any"] == 0 else 1


def cmd_pipeline(a) -> int:
    from headplast.analysis.config import AnalysisConfig
    from headplast.report.headline import answer_block
    from headplast.report.lines import report_line
    from headplast.steps.pipeline import PipelineConfig, run_pipeline
    from headplast.steps.runs import read_aggregate, read_compare
    from headplast.store import layout

    cfg = config_from_args(PipelineConfig, a, "p_", train=config_from_args(TrainConfig, a),
                           measure=_measure_config(a),
                           analysis=config_from_args(AnalysisConfig, a, "s_"))
    out = run_pipeline(cfg)
    print("\n" + "=" * 60)
    # the answer first (with several seeds, the aggregate over them before each seed's), then where everything is
    compares = [read_compare(p / layout.COMPARE_METRICS) for p in out["compare"]]
    aggregates = [read_aggregate(p / layout.AGGREGATE_METRICS) for p in out["aggregate"]]
    print("\n".join(answer_block(compares, aggregates)))
    print(f"outputs under {cfg.train.output_root}/")
    for key in ("runs", "compare", "aggregate", "ranks"):
        for p in out[key]:
            print(f"  {key:9s} {p}")
    for p in out["compare"]:
        print(f"details: {p / layout.COMPARE_SUMMARY} (statistics, counter-examples, findings) and the figures beside it")
    if out["report"].exists():
        print(f"report: {report_line(out['report'])}")
    return 0


def cmd_sweep(a) -> int:
    from headplast.analysis.config import AnalysisConfig
    from headplast.steps.pipeline import PipelineConfig
    from headplast.sweep.config import SweepConfig
    from headplast.report.lines import report_line
    from headplast.sweep.run import run_sweep

    pipeline = config_from_args(PipelineConfig, a, "p_", train=config_from_args(TrainConfig, a),
                                measure=_measure_config(a),
                                analysis=config_from_args(AnalysisConfig, a, "s_"))
    cfg = config_from_args(SweepConfig, a, "w_", pipeline=pipeline)
    out = run_sweep(cfg)
    print(("\n" if not cfg.status else "") + out["table"])
    for r in out["reports"]:
        print(f"report: {report_line(r)}")
    if cfg.status:
        return 0
    states = {r.status for r in out["jobs"]}
    if cfg.engine == "slurm" and not cfg.wait and out["submitted"]:
        print(f"follow: headplast sweep --status --output-root {cfg.pipeline.train.output_root} (same flags); "
              "rerun the same command to resubmit what failed; once done, `headplast report --output-root "
              f"{cfg.pipeline.train.output_root}` writes the HTML report")
        return 0
    return 0 if states == {"done"} else 1


def _measure_config(a) -> MeasureConfig:
    """The pipeline's measurement config: its runs are measured where they are trained (one
    --device for both; the flag belongs to training in the pipeline's parser)."""
    return config_from_args(MeasureConfig, a, "m_", **({"device": a.device} if getattr(a, "device", None) else {}))


def _add_experiment_args(parser) -> None:
    """The pipeline's flags: the experiment, training, measurement, statistics."""
    from headplast.analysis.config import AnalysisConfig
    from headplast.steps.pipeline import PipelineConfig

    add_config_args(parser, PipelineConfig, dest_prefix="p_", title="experiment")
    add_config_args(parser, TrainConfig, exclude=("task", "method", "seed", "lora_r", "lora_alpha", "force",
                                                  "rank_by", "rank_from"),
                    title="training")
    # one --device for training and measuring (_measure_config); --batch-size is training's old name here
    add_config_args(parser, MeasureConfig, exclude=("eval_size", "eval_source", "device"), dest_prefix="m_",
                    title="measurement", without=("--batch-size",))
    add_config_args(parser, AnalysisConfig, dest_prefix="s_", title="statistics")


def build_parser() -> argparse.ArgumentParser:
    from headplast.sweep.config import SweepConfig

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

    m = sub.add_parser("measure", help="every per-head measurement of a run: importance before and after "
                                       "(exact ablation), gradient/Fisher, update magnitude, update effect, "
                                       "update geometry")
    m.add_argument("run_dir", nargs="?", default=None, help="a run directory (or give --task/--method/...)")
    add_config_args(m, TrainConfig, only=RUN_ID, title="which run (without RUN_DIR)")
    add_config_args(m, MeasureConfig, dest_prefix="m_", title="measurement")
    m.add_argument("--force", action="store_true", help="recompute even if up to date")
    m.set_defaults(func=cmd_measure)

    co = sub.add_parser("check-overlap", help="how many of a run's measured examples share text with its "
                                              "training examples (exit 1 if any)")
    co.add_argument("run_dir", help="a measured run directory")
    co.set_defaults(func=cmd_check_overlap)

    analysis_cmds.register(sub)

    pl = sub.add_parser("pipeline", help="the guide's whole experiment: train, measure, plot, compare (+ "
                                         "aggregate over seeds, compare ranks)")
    _add_experiment_args(pl)
    pl.set_defaults(func=cmd_pipeline)

    sw = sub.add_parser("sweep", help="the pipeline's runs as jobs on an engine: local, ray (one GPU box or a "
                                      "Ray cluster), slurm (job arrays via submitit); --status follows them")
    add_config_args(sw, SweepConfig, dest_prefix="w_", title="sweep")
    _add_experiment_args(sw)
    sw.set_defaults(func=cmd_sweep)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from headplast.sweep.worker import show_deprecations

    show_deprecations()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from headplast.sweep.worker import quiet_libraries

        quiet_libraries()
    from headplast.store import locks

    locks.set_timeout(args.lock_timeout)
    try:
        if args.func is not cmd_measure:  # measure splits its heads across the processes
            _one_process()
        return args.func(args)
    except HeadplastError as e:
        if args.debug:
            raise
        code = _error(e.problem, e.fix)
        if getattr(e, "hard_exit", False):  # a launched rank stopped by another's failure (measure.shard)
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
        return code
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


def _one_process() -> None:
    """Each run is one process on one device, except `headplast measure` (its heads are split across
    the processes). Under `accelerate launch` / torchrun every process would run the whole step and
    wait on the others' locks, so that is refused up front."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise HeadplastError(f"headplast was started as one of {world} processes (WORLD_SIZE={world}: accelerate "
                             "launch or torchrun); one run uses one process and one device",
                             "run it without accelerate launch / torchrun (only `headplast measure RUN_DIR` splits "
                             "one run across processes); to use several GPUs for many runs, run them at once: "
                             "headplast sweep --engine ray --gpus-per-job 1")


_FS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _error(problem: str, fix: str | None) -> int:
    print(f"headplast: error: {problem}", file=sys.stderr)
    if fix:
        print(f"  fix: {fix}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
