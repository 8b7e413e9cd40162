"""The answer to the question, from a comparison's numbers (compare_metrics.json) and, with
several seeds, from the aggregate over them (aggregate_metrics.json), which comes first.

    FFT: across heads, no detectable relation (ρ(I_pre, U) = +0.15, 95% CI -0.24 to +0.52); within layers, ...
    LoRA_r8: across heads, ...; within layers, important heads change more than the others of their layer (...)
    FFT vs LoRA_r8: no detectable difference in ρ(I_pre, U) (...; exploratory, Holm-adjusted p = 1)

The primary endpoint is ρ(I_pre, U) of each method, across heads and within layers; its
intervals resample layers (a layer's heads share its depth profile) and eval examples, and the
wider decides. Everything else is secondary: Holm-adjusted as one family, labelled exploratory.
Every verdict is written by report.verdict. Collapsed runs and unreliable importance are said on
the line.
"""

from __future__ import annotations

import math

import numpy as np

from headplast.analysis.interactions import adds_up
from headplast.analysis.names import BEYOND, PRIMARY, PRIMARY_PAIR, display_name, pair_name, run_test_name
from headplast.analysis.stats import combined, union_ci
from headplast.analysis.thresholds import unreliable
from headplast.report.verdict import sentence
from headplast.store.schema import plasticity_columns

MORE, LESS = "important heads change more than the others", "important heads change less than the others"
MORE_W, LESS_W = ("important heads change more than the others of their layer",
                  "important heads change less than the others of their layer")


def primary_text(across: dict, within: dict) -> str:
    """'across heads, <verdict>; within layers, <verdict>' of the primary endpoint."""
    return (f"across heads, {sentence(across, display_name(PRIMARY), MORE, LESS)}; "
            f"within layers, {sentence(within, 'ρ', MORE_W, LESS_W)}")


def method_line(label: str, stats: dict, info: dict) -> str:
    p = stats["pairs"].get(PRIMARY_PAIR, {})
    margin = stats.get("equivalence_margin", math.nan)
    across, within = ({**combined(p, w), "margin": margin} for w in (False, True))
    line = f"{label}: {primary_text(across, within)}"
    cautions = []
    if info.get("collapsed"):
        cautions.append("collapsed: no better than the majority class")
    rel = stats.get("reliability", {}).get("I_pre", {}).get("reliability", math.nan)
    if unreliable(rel):
        cautions.append(f"I_pre reliability only {rel:.2f}")
    seen = overlap_caution(info)
    if seen:
        cautions.append(seen)
    return line + (f"; caution: {', '.join(cautions)}" if cautions else "")


def overlap_caution(info: dict) -> str | None:
    """Eval examples that share text with the training examples (measured, data.overlap), or
    eval examples trained on: I_post and the update effect are then partly measured on seen text."""
    if info.get("eval_source") == "train":
        return "measured on training examples (--eval-source train)"
    ov = info.get("eval_overlap")
    if ov and ov.get("any"):
        return (f"{ov['any']} of {ov['examples']} eval examples ({ov['fraction']:.1%}) share text with training "
                "examples")
    return None


def holm_p(m: dict, name: str) -> float:
    """The Holm-adjusted p of a secondary test of a comparison (NaN where its file has none)."""
    return m.get("secondary", {}).get("tests", {}).get(name, {}).get("p_holm", math.nan)


def difference_inference(m: dict, name: str) -> dict:
    d = m["key_statistics"][name]
    return {"estimate": d["difference"], "ci95": d["ci95"], "p_holm": holm_p(m, name)}


def difference_text(m: dict, name: str = PRIMARY, what: str | None = None) -> str:
    la, lb = m["labels"]
    what = what or display_name(name)
    return sentence(difference_inference(m, name), f"difference {lb} − {la}",
                    f"{what} is higher under {lb} than under {la}", f"{what} is lower under {lb} than under {la}",
                    none=f"no detectable difference in {what}", equivalent=f"no difference in {what}",
                    undefined=f"the two cannot be compared ({what} is undefined for a run)")


def difference_line(m: dict) -> str:
    la, lb = m["labels"]
    return f"{la} vs {lb}: {difference_text(m)}"


def headline(m: dict) -> list[str]:
    """Each method's answer (the primary endpoint), then the difference between them (secondary)."""
    labels = tuple(m["labels"])
    lines = [method_line(lab, m["stats"][lab], m["runs"][lab]) for lab in labels]
    return lines + [difference_line(m)]


def _rho_text(m: dict, lab: str, x: str, y: str) -> str:
    p = m["stats"][lab]["pairs"].get(pair_name(x, y), {})
    name = display_name(pair_name(x, y, "rho"))
    inf = {**combined(p), "p_holm": holm_p(m, run_test_name(lab, pair_name(x, y, "rho")))}
    return sentence(inf, name, "positive relation", "negative relation", undefined=f"{name} undefined")


def effect_lines(m: dict) -> list[str]:
    """Per method (secondary): does the size of a head's update, and its importance before,
    predict how much of fine-tuning's gain the head's own update carries (effect_fwd)? U is the norm
    of the head's Q/K/V/O weight update only (measure.update excludes biases), while effect_fwd
    patches the head's Q/K/V biases too (measure.effect); the line says so, and says where the
    heads' single effects do not add up to all heads' updates at once (analysis.interactions)."""
    out = []
    for lab in m["labels"]:
        if pair_name("U", "effect_fwd") not in m["stats"][lab]["pairs"]:
            continue
        out.append(f"{lab}: the gain a head's own update carries vs its size: "
                   f"{_rho_text(m, lab, 'U', 'effect_fwd')}; vs its importance before: "
                   f"{_rho_text(m, lab, 'I_pre', 'effect_fwd')} (U counts weights only; "
                   "the effect patches the Q/K/V biases too)" + interaction_clause(m["stats"][lab]))
    return out


def num_text(v, fmt: str) -> str:
    return "undefined" if v is None or not math.isfinite(v) else format(v, fmt)


def interaction_numbers(row: dict) -> str:
    """'joint +0.1234 nats, sum of single heads +0.2345 (ratio 0.53, interaction 95% CI -0.15 to -0.07)'."""
    lo, hi = row.get("ci95") or (None, None)
    return (f"all heads' updates at once gain {num_text(row['joint'], '+.4f')} nats, the sum of single heads "
            f"{num_text(row['sum_single'], '+.4f')} (ratio {num_text(row['ratio'], '.2f')}, interaction "
            f"{num_text(row['interaction'], '+.4f')}, 95% CI {num_text(lo, '+.4f')} to {num_text(hi, '+.4f')})")


def interaction_clause(stats: dict) -> str:
    """'; the heads' single effects do not add up: ...' where the model's interaction interval
    (analysis.interactions) excludes 0; nothing where they add up or the run has no such data."""
    row = stats.get("interactions", {}).get("model")
    if not row or adds_up(row) is not False:
        return ""
    return f"; the heads' single effects do not add up: {interaction_numbers(row)}"


def beyond_lines(m: dict) -> list[str]:
    """Per method (secondary): does importance predict the update beyond what the gradient at θ0,
    the head's pretrained weight norm and its layer predict (partial ρ, layer-block interval)?"""
    out = []
    for lab in m["labels"]:
        p = m["stats"][lab]["pairs"].get(PRIMARY_PAIR, {})
        if "beyond" not in p:  # analysed before it existed
            continue
        inf = {**combined(p, part="beyond"), "p_holm": holm_p(m, run_test_name(lab, BEYOND))}
        out.append(f"{lab}: beyond the gradient at θ0, ||W0|| and the layer, "
                   + sentence(inf, display_name(BEYOND), "importance predicts more change",
                              "importance predicts less change", none="importance adds no detectable prediction",
                              undefined=f"{display_name(BEYOND)} undefined"))
    return out


def _wider(t_ci, seed_ci):
    """The union of the t-interval over seeds and the seeds' own interval; undefined where the
    t-interval is (one seed: no interval over seeds)."""
    if not t_ci or not all(v is not None and math.isfinite(v) for v in t_ci):
        return t_ci
    return union_ci(t_ci, seed_ci)


def aggregate_lines(agg: dict) -> list[str]:
    """The answer over seeds: each method's mean ρ(I_pre, U) over seeds (Fisher z), across heads and
    within layers, with the wider of the t-interval over seeds and the seeds' own intervals; the
    methods' paired differences (secondary, Holm)."""
    margin = agg.get("equivalence_margin", math.nan)
    P_ = display_name(PRIMARY)
    out = []
    for meth in agg["methods"]:
        pm = agg["per_method"].get(meth) or {}
        infs = []
        for s in (PRIMARY, pair_name("I_pre", "U", "partial_rho")):
            d = pm.get(s) or {}
            # the wider of the t-interval over seeds and the seeds' own intervals (across.seed_intervals)
            infs.append({"estimate": d.get("mean", math.nan), "ci95": _wider(d.get("ci95"), d.get("seed_ci95")),
                         "ci90": _wider(d.get("ci90"), d.get("seed_ci90")), "margin": margin})
        n = (pm.get(PRIMARY) or {}).get("n", 0)
        out.append(f"{meth} ({n} seeds): {primary_text(*infs)}")
    for pair, res in agg.get("paired_tests", {}).items():
        t = res.get(PRIMARY)
        if not t:
            continue
        lb, la = pair.split(" - ")
        inf = {"estimate": t.get("mean_difference", math.nan), "ci95": t.get("ci95"),
               "p_holm": t.get("t_p_holm", math.nan)}
        out.append(f"{la} vs {lb}: " + sentence(inf, f"mean difference {lb} − {la}",
                                                f"{P_} is higher under {lb} than under {la}",
                                                f"{P_} is lower under {lb} than under {la}",
                                                none=f"no detectable difference in {P_}",
                                                undefined="the two cannot be compared over seeds"))
    return out


def answer_block(compares: list[dict], aggregates: list[dict]) -> list[str]:
    """Everything the main job prints as its answer: with several seeds the aggregate over them
    first, then each comparison (task and seed)."""
    out = []
    for agg in aggregates:
        seeds = ", ".join(str(s) for s in agg["seeds"])
        out.append(f"ANSWER ({agg['task']}, seeds {seeds}; mean over seeds, 95% CI the wider of the t-interval over "
                   "seeds and the seeds' own): does a "
                   "head's importance before fine-tuning predict how much fine-tuning changes it?")
        out += [f"  {line}" for line in aggregate_lines(agg)] + [""]
    for m in compares:
        title = "ANSWER" if not aggregates else "per seed"
        out.append(f"{title} ({m['task']}, seed {m['seed']}): does a head's importance before fine-tuning predict "
                   "how much fine-tuning changes it?")
        out += [f"  {line}" for line in answer_lines(m)] + [""]
    return out


def change_measures_lines(m: dict) -> list[str]:
    """Per method (descriptive, no verdict: the comparison's sections hold their tests): importance
    against the other measures of how much a head changed (the schemas' plasticity columns besides
    U: what it computes, where it attends, its circuits), each with the answer's interval."""
    out = []
    for lab in m["labels"]:
        parts = []
        for y in plasticity_columns():
            p = m["stats"][lab]["pairs"].get(pair_name("I_pre", y))
            if y == "U" or p is None:
                continue
            inf = combined(p)
            lo, hi = inf["ci95"]
            parts.append(f"{display_name(pair_name('I_pre', y, 'rho'))} = {num_text(inf['estimate'], '+.2f')} "
                         f"[{num_text(lo, '+.2f')}, {num_text(hi, '+.2f')}]")
        if parts:
            out.append(f"{lab}: importance vs other measures of change (descriptive): " + ", ".join(parts))
    return out


def answer_lines(m: dict) -> list[str]:
    """Everything the answer says for one comparison: the headline, the update effect, what importance
    adds beyond the gradient, the other measures of change, the subspaces."""
    return (m.get("headline", []) + effect_lines(m) + beyond_lines(m) + change_measures_lines(m)
            + subspace_line(m) + circuit_subspace_line(m))


def circuit_subspace_line(m: dict) -> list[str]:
    """Do the two methods change a head's circuits (ΔQK, ΔOV) along the same directions, beyond the
    chance of two updates that keep their energy in the head's θ0 span and outside it?"""
    cs = {k: v for k, v in (m.get("circuit_subspace") or {}).items()
          if v["phi"].get("mean") is not None and np.isfinite(v["phi"]["mean"])}
    if not cs:
        return []
    k = next(iter(cs.values()))["k"]
    parts = [f"{v['name']} {v['phi']['mean']:.2f} (chance {v['random_within_parts']['mean']:.2f})" for v in cs.values()]
    above = sum(v["random_within_parts"]["phi_minus_null"]["ci95"][0] > 0 for v in cs.values())
    return [f"circuit updates: {' and '.join(m['labels'])} share φ of a head's top-{k} singular directions: "
            + ", ".join(parts) + f"; above chance on {above} of {len(cs)} sides (each side's 95% interval, "
            "resampling layers; not adjusted for the four)"]


def subspace_line(m: dict) -> list[str]:
    """Do FFT and LoRA move a head in the same directions (more than chance keeping each part's share,
    analysis.subspace.random_within_parts, and more than two seeds of one method do)?"""
    sub = m.get("subspace")
    mean = sub["phi"].get("mean") if sub else None
    if mean is None or not np.isfinite(mean):  # null as written, NaN as read back (steps.runs.read_compare)
        return []
    floors = "; ".join(f"{lab} seed vs seed {f['mean']:.2f}" for lab, f in sub["noise_floor"].items())
    null = sub.get("random_within_parts") or {}  # absent in compare_metrics.json written before it existed
    if null.get("mean") is not None and np.isfinite(null["mean"]):
        d = null["phi_minus_null"]
        chance = (f"chance keeping each of Q, K, V, O's share of the directions {null['mean']:.2f}, "
                  f"φ minus it {d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]; "
                  f"random subspaces of the whole head {sub['random_subspaces']:.2f}")
    else:
        chance = (f"random subspaces {sub['random_subspaces']:.2f}, a baseline too weak where both updates sit "
                  "in one part")
    return [f"{' and '.join(m['labels'])} share φ = {mean:.2f} of a head's top-{sub['k']} update "
            f"directions on average ({chance}; " + (floors or "no second seed for a noise floor") + ")"]
