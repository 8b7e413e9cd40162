"""`headplast report`: one self-contained HTML file of everything under an output root (runs,
comparisons, seeds, ranks, provenance), by headplast.report.html."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from headplast.errors import HeadplastError
from headplast.options import option, validate
from headplast.store import layout, records
from headplast.steps import versions
from headplast.steps.outcome import Outcome, recorded_step
from headplast.steps.runs import read_aggregate, read_compare, read_stats
from headplast.store.io import atomic_write_text, file_sha256, read_json

REPORT = "report.html"


@dataclass(frozen=True)
class ReportConfig:
    output_root: str = option("outputs", "root whose runs and comparisons the report shows")
    out: str | None = option(None, f"the HTML file (default: <output-root>/{REPORT})")

    def __post_init__(self):
        validate(self)

    def path(self) -> Path:
        return Path(self.out) if self.out else Path(self.output_root) / REPORT


def _fix(d: Path) -> str:
    return f"re-run `headplast plot {d} --force` (or the pipeline with --force)"


def _run(d: Path) -> dict:
    """A plotted run, its files checked against the record of the step that wrote them."""
    records.verify(d, "analyse", _fix(d))
    meta = d / layout.MEASURE_META
    return {"rc": read_json(d / layout.RUN_CONFIG), "stats": read_stats(d),
            "cases": read_json(d / layout.CASES), "heads": pd.read_csv(d / layout.HEADS_CSV),
            "measure": read_json(meta) if meta.exists() else {}}


def _plotted_runs(root: Path) -> dict[str, dict]:
    runs = {}
    for kind in ("FFT", "LoRA"):
        for d in sorted(root.glob(f"{kind}/*/*")):
            if records.read_record(d, "analyse"):
                runs[str(d.relative_to(root))] = _run(d)
    return runs


def _compares(root: Path, runs: dict) -> list[dict]:
    out = []
    for f in sorted(root.glob(f"COMPARE/*/*/{layout.COMPARE_METRICS}")):
        records.verify(f.parent, "compare", f"re-run `headplast compare --output-root {root} --force`")
        m = read_compare(f)
        keys = {lab: str(layout.run_dir(root, layout.RunId.from_label(m["task"], lab, m["seed"])).relative_to(root))
                for lab in m["labels"]}
        if all(k in runs for k in keys.values()):
            out.append({"metrics": m, "runs": keys})
    return out


def collect(root: Path) -> dict:
    from headplast import __version__

    if not root.is_dir():
        raise HeadplastError(f"--output-root {root} does not exist", "give the root a pipeline wrote to")
    runs = _plotted_runs(root)
    if not runs:
        raise HeadplastError(f"{root} holds no plotted run", "run `headplast pipeline` (or train, measure and plot "
                             "a run) with this --output-root first")
    return {"root": str(root), "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "version": __version__, "runs": runs, "compares": _compares(root, runs),
            "aggregates": [read_aggregate(f) for f in sorted(root.glob("MULTI_SEED/**/aggregate_metrics.json"))],
            "ranks": [(str(f.parent.relative_to(root)), pd.read_csv(f))
                      for f in sorted(root.glob("RANK_COMPARISON/**/rank_table.csv"))]}


def _key(root: Path) -> str:
    """What the report shows: the outputs (content hashes) of every step it reads, and the renderer."""
    from headplast import __version__

    inputs = {}
    for step, pattern in (("analyse", "FFT/*/*"), ("analyse", "LoRA/*/*"), ("compare", "COMPARE/*/*"),
                          ("aggregate", "MULTI_SEED/**"), ("ranks", "RANK_COMPARISON/**")):
        for d in sorted(root.glob(pattern)):
            rec = records.read_record(d, step)
            if rec:
                inputs[f"{d.relative_to(root)}/{step}"] = rec["outputs"]
    template = file_sha256(Path(__file__).parents[1] / "report" / "templates" / "report.html.j2")
    return versions.key("report", {"version": __version__, "template": template}, inputs)


def run_report(cfg: ReportConfig, force: bool = False) -> Outcome:
    """Write the report (atomically; skipped when nothing it shows changed). Outcome.path: the file."""
    from headplast.report.html import render

    root, out = Path(cfg.output_root), cfg.path()
    name = "report" if out.name == REPORT else f"report_{out.stem}"  # one record per report file
    step = recorded_step(out.parent, name, _key(root), (out.name,),
                         lambda: atomic_write_text(out, render(collect(root))), force,
                         lambda: f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return Outcome(step.status, out, step.detail)
