"""The version of the code behind each step: it enters the step's key (records.step_key), so
bumping it makes exactly that step's results, and what reads them, outdated.

Bump a version when a change alters what the step writes for the same inputs (a bug fix, a new
estimator, another default inside the step); not for refactors that leave every output
byte-identical, nor for new config fields (those enter the key by themselves). A measurement's
version sits on its declaration (Measurement.version); the other steps' are here.
Version 1 is the code from before versions were kept (left out of the key).
"""

from __future__ import annotations

from headplast.store import records

STEPS = {
    "theta0": 1,
    "train": 1,
    # 2: layer-block intervals, within-layer ρ, TOST, Holm (issue 29)
    # 3: figures and the ρ line show the layer-aware interval; one display name per statistic
    # 4: ρ(I_pre, · | grad_norm, W0, layer) (issue 30 item 4)
    # 5: reliability of measures on halves (func_change); resample counts kept beside p-values;
    #    fig_change_measures (importance vs every measure of change)
    # 6: statistics over K/V groups under grouped-query attention (stats['kv_groups'])
    "analyse": 6,
    # 2: one verdict function, comparison table, centred example interval (issue 29)
    # 3: figures' layer-aware intervals, display names, sections from the schemas
    # 4: the summary says its difference intervals resample layers (they did; the text said heads)
    # 5: the partial ρ beyond the gradient
    # 6: bootstrap p is its bound 2/(B+1) beyond every resample again (no normal tail), with the Holm
    #    family's resolution; counter-example counts resampled as often as the rest; finite heads only
    # 7: the overlap of the circuit updates' subspaces; amplification at the compared LoRA rank
    # 8: φ's intervals resample layers; amplification over the matrices both runs adapted
    "compare": 8,
    # 2: aggregate-first answer, raw disattenuated mean, tie-corrected Kendall's W, Fisher-z tests (issue 29)
    # 3: one display name per statistic, one reliability bar
    # 4: ρ beyond the gradient aggregated over seeds
    # 5: each method's seeds' own intervals of the primary endpoint beside the t-interval over seeds
    "aggregate": 5,
    # 2: statistics recomputed by the code of issue 29 (raw disattenuated mean, layer-aware run stats)
    "ranks": 2,
    # 2: the answer's new wording and the comparison table (issue 29)
    # 3: layer-aware intervals in the scatter titles; heads table and maps from the schemas
    # 4: the answer's line on what importance adds beyond the gradient
    # 5: the answer lists importance against the other measures of change
    # 6: the answer's line on the circuit updates' subspaces
    # 7: that line says its intervals resample layers, unadjusted for the four sides
    "report": 7,
}


def version_of(step: str) -> int:
    """A step's version: a measurement's from its declaration, the others' from STEPS."""
    if step in STEPS:
        return STEPS[step]
    if step.startswith("report_"):  # a report written to another file (report --out) is a report
        return STEPS["report"]
    from headplast.measure import registry  # measurement names are steps too

    return registry.get(step).version


def every_version() -> dict[str, int]:
    """{step: version} of every step and measurement (a sweep job's key: a bump re-runs the job,
    whose steps then redo only what is outdated)."""
    from headplast.measure import registry

    return {**STEPS, **{m.name: m.version for m in registry.MEASUREMENTS}}


def key(step: str, config: dict, inputs: dict) -> str:
    """records.step_key with the step's current version."""
    return records.step_key(step, config, inputs, version_of(step))
