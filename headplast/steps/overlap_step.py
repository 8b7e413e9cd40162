"""`headplast check-overlap RUN`: how many of a run's measured examples share text with the
examples it was trained on, measured again from the data (not read from the run's records)."""

from __future__ import annotations

from pathlib import Path

from headplast.data.loaders import Examples
from headplast.data.overlap import RULE, TrainingText, overlap_report
from headplast.data.prepare import prepare_from_config
from headplast.errors import HeadplastError
from headplast.store import layout
from headplast.store.io import read_json


def _eval_examples(run_dir: Path) -> tuple[Examples, dict, object]:
    rc = read_json(run_dir / layout.RUN_CONFIG, "run config", f"{run_dir} is not a trained run: run headplast train")
    sub_path = run_dir / layout.EVAL_SUBSET
    if not sub_path.exists():
        raise HeadplastError(f"{run_dir} has no {layout.EVAL_SUBSET}: it was not measured yet",
                             f"run `headplast measure {run_dir}` first")
    sub = read_json(sub_path, "eval subset")
    data = prepare_from_config(rc["config"])
    split = data.validation if sub["split"] == "validation" else data.full_train
    return split.subset(sub["indices"]), sub, data


def check_overlap(run_dir: str | Path, examples_shown: int = 5) -> dict:
    """The overlap report of the run's eval subset against its training examples (counts by kind,
    the fraction, a few overlapping examples), and whether it equals what the run recorded."""
    d = Path(run_dir)
    ev, sub, data = _eval_examples(d)
    training = TrainingText(data.train)
    rep = overlap_report(ev, training, len(data.train))
    shown = [" | ".join(t) for t in ev.texts if training.overlaps(t)][:examples_shown]
    recorded = sub.get("overlap")
    same = None if recorded is None else all(recorded.get(k) == rep[k] for k in ("examples", "any"))
    return {**rep, "run": str(d), "eval_source": sub.get("eval_source"), "split": sub["split"],
            "examples_overlapping": shown, "matches_record": same, "rule": RULE}
