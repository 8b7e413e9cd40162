"""The answer says what the intervals say, and nothing more: the primary endpoint across heads and
within layers from layer-aware intervals, "no detectable relation" unless an equivalence test
supports "no relation", secondary verdicts Holm-adjusted and labelled exploratory, the aggregate
over seeds first, and findings that use the answer's words."""

import math

import numpy as np
import pytest

from headplast.report.findings import comparison_table, findings
from headplast.report.headline import aggregate_lines, answer_block, answer_lines, headline

NAN = [math.nan, math.nan]


def _pair(rho, ci, within=0.0, ci_within=(-0.5, 0.5), ci90=None, ci90_within=None, ci_examples=None):
    return {"spearman": rho, "ci95": [-0.9, 0.9], "ci95_layers": list(ci), "ci90_layers": list(ci90 or ci),
            "p_layers": 0.5, "ci95_examples": ci_examples, "ci90_examples": ci_examples, "p_examples": 0.5,
            "within_layer": {"spearman": within, "ci95_layers": list(ci_within),
                             "ci90_layers": list(ci90_within or ci_within), "p_layers": 0.5}}


def _metrics(pair_fft, pair_lora, diff, diff_ci, p_holm=0.01, collapsed=False, rel=0.9, margin=0.2):
    def stats(p):
        return {"pairs": {"I_pre~U": p}, "reliability": {"I_pre": {"reliability": rel}}, "equivalence_margin": margin}
    rho = (pair_fft["spearman"], pair_lora["spearman"])
    key = {"FFT": rho[0], "LoRA_r8": rho[1], "difference": diff, "ci95": list(diff_ci), "p_value": p_holm / 9,
           "exceeds_uncertainty": diff_ci[0] > 0 or diff_ci[1] < 0}
    keys = {"rho(I_pre,U)": key, "n_important_but_static": {"FFT": 2, "LoRA_r8": 3, "difference": 1, "ci95": [-2, 4]},
            "n_plastic_but_unimportant": {"FFT": 1, "LoRA_r8": 1, "difference": 0, "ci95": [-2, 2]}}
    return {"labels": ["FFT", "LoRA_r8"], "stats": {"FFT": stats(pair_fft), "LoRA_r8": stats(pair_lora)},
            "runs": {"FFT": {"collapsed": False}, "LoRA_r8": {"collapsed": collapsed}}, "key_statistics": keys,
            "secondary": {"tests": {"rho(I_pre,U)": {"p_holm": p_holm}, "n_important_but_static": {"p_holm": 1.0},
                                    "n_plastic_but_unimportant": {"p_holm": 1.0}}},
            "validation": {"metric_name": "accuracy", "FFT": 0.81, "LoRA_r8": 0.82, "theta0": 0.745,
                           "majority": 0.509}}


def test_across_heads_and_within_layers_side_by_side_in_the_answers_words():
    """Issue 29's seed 1 LoRA: nothing across heads, a relation within layers; the old answer said
    'important heads change no differently'."""
    m = _metrics(_pair(0.15, (-0.10, 0.41), 0.05, (-0.3, 0.35)), _pair(0.04, (-0.30, 0.38), 0.41, (0.20, 0.60)),
                 -0.11, (-0.38, 0.19), p_holm=1.0)
    assert headline(m) == [
        "FFT: across heads, no detectable relation (ρ(I_pre, U) = +0.15, 95% CI -0.10 to +0.41); within layers, "
        "no detectable relation (ρ = +0.05, 95% CI -0.30 to +0.35)",
        "LoRA_r8: across heads, no detectable relation (ρ(I_pre, U) = +0.04, 95% CI -0.30 to +0.38); within layers, "
        "important heads change more than the others of their layer (ρ = +0.41, 95% CI +0.20 to +0.60)",
        "FFT vs LoRA_r8: no detectable difference in ρ(I_pre, U) (difference LoRA_r8 − FFT = -0.11, 95% CI -0.38 to "
        "+0.19; exploratory, Holm-adjusted p = 1)"]
    assert not any("no differently" in line or "no relation" in line for line in headline(m))


def test_the_union_with_the_example_interval_decides():
    m = _metrics(_pair(0.3, (0.1, 0.5), ci_examples=[-0.05, 0.4]), _pair(-0.3, (-0.5, -0.1)), -0.6, (-0.9, -0.2))
    lines = headline(m)
    assert lines[0].startswith("FFT: across heads, no detectable relation (ρ(I_pre, U) = +0.30, 95% CI -0.05 to +0.50)")
    assert lines[1].startswith("LoRA_r8: across heads, important heads change less than the others (ρ(I_pre, U) = -0.30")
    assert lines[2].startswith("FFT vs LoRA_r8: ρ(I_pre, U) is lower under LoRA_r8 than under FFT (difference")


def test_no_relation_only_where_the_equivalence_test_rejects_the_smallest_effect():
    inside = _pair(0.02, (-0.19, 0.22), 0.0, (-0.3, 0.3), ci90=(-0.15, 0.18), ci90_within=(-0.25, 0.25))
    m = _metrics(inside, inside, 0.0, (-0.3, 0.3), p_holm=1.0)
    line = headline(m)[0]
    assert line.startswith("FFT: across heads, no relation (ρ(I_pre, U) = +0.02, 95% CI -0.19 to +0.22; |ρ| < 0.20 "
                           "by an equivalence test, TOST (90% CI -0.15 to +0.18))")
    assert "within layers, no detectable relation (ρ = +0.00" in line  # its 90% CI reaches the margin
    wider = _metrics(inside, inside, 0.0, (-0.3, 0.3), margin=0.1)  # a smaller effect of interest: not shown
    assert headline(wider)[0].startswith("FFT: across heads, no detectable relation")


def test_a_secondary_claim_needs_its_holm_adjusted_p():
    m = _metrics(_pair(0.03, (-0.24, 0.30)), _pair(-0.27, (-0.49, -0.02)), -0.30, (-0.53, -0.06), p_holm=0.2)
    assert headline(m)[2] == ("FFT vs LoRA_r8: no detectable difference in ρ(I_pre, U) (difference LoRA_r8 − FFT = "
                              "-0.30, 95% CI -0.53 to -0.06; exploratory, Holm-adjusted p = 0.2)")
    assert comparison_table(m)["rows"][0][-1] == "no detectable difference (exploratory, Holm p = 0.2)"


@pytest.mark.parametrize("p_holm", [0.01, 0.2])
def test_findings_never_contradict_the_answer_with_seed_2s_numbers(p_holm):
    """Seed 2: FFT +0.03 [-0.24, +0.30], LoRA_r8 -0.27 [-0.49, -0.02], difference -0.30 [-0.53, -0.06].
    The old findings named FFT (the smaller |ρ|) as where importance predicts less, beside the
    answer's 'lower under LoRA_r8'."""
    m = _metrics(_pair(0.03, (-0.24, 0.30)), _pair(-0.27, (-0.49, -0.02)), -0.30, (-0.53, -0.06), p_holm=p_holm)
    answer = headline(m)[2].split(": ", 1)[1]
    f = findings(m)
    assert f"How well importance predicts the update, FFT vs LoRA_r8: {answer}." in f
    text = " ".join(f)
    assert "under FFT" not in text.replace("than under FFT", "")
    row = comparison_table(m)["rows"][0]
    assert row[:5] == ["rho(I_pre,U)", "0.030", "-0.270", "-0.300", "-0.530 to -0.060"]
    assert row[5].startswith("lower under LoRA_r8" if p_holm < 0.05 else "no detectable difference")
    assert ("is lower under LoRA_r8" in answer) == (p_holm < 0.05)


def test_cautions_are_said():
    m = _metrics(_pair(0.3, (0.1, 0.5)), _pair(0.3, (0.1, 0.5)), 0.0, (-0.1, 0.1), collapsed=True, rel=0.5)
    assert headline(m)[1].endswith("caution: collapsed: no better than the majority class, I_pre reliability only 0.50")


def test_a_file_without_layer_intervals_is_undefined_not_the_old_iid_verdict():
    m = _metrics(_pair(0.3, (0.1, 0.5)), _pair(0.3, (0.1, 0.5)), 0.0, (-0.1, 0.1))
    for lab in m["labels"]:
        p = m["stats"][lab]["pairs"]["I_pre~U"]
        del p["ci95_layers"], p["ci90_layers"], p["within_layer"]
    assert headline(m)[0].startswith("FFT: across heads, undefined")


def test_effect_lines_are_exploratory_and_use_the_wider_interval():
    from headplast.report.headline import effect_lines

    m = _metrics(_pair(0.3, (0.1, 0.5)), _pair(-0.3, (-0.5, -0.1)), -0.6, (-0.9, -0.2))
    m["stats"]["FFT"]["pairs"].update({"U~effect_fwd": _pair(0.4, (0.2, 0.6), ci_examples=[-0.05, 0.55]),
                                       "I_pre~effect_fwd": _pair(0.5, (0.3, 0.7))})
    m["secondary"]["tests"].update({"FFT: rho(U,effect_fwd)": {"p_holm": 0.3},
                                    "FFT: rho(I_pre,effect_fwd)": {"p_holm": 0.04}})
    assert effect_lines(m) == [  # LoRA_r8 has no update effect here: no line
        "FFT: the gain a head's own update carries vs its size: no detectable relation (ρ(U, effect_fwd) = +0.40, "
        "95% CI -0.05 to +0.60; exploratory, Holm-adjusted p = 0.3); vs its importance before: positive relation "
        "(ρ(I_pre, effect_fwd) = +0.50, 95% CI +0.30 to +0.70; exploratory, Holm-adjusted p = 0.04) (U counts "
        "weights only; the effect patches the Q/K/V biases too)"]


def _aggregate():
    def mc(mean, ci, ci90):
        return {"n": 3, "mean": mean, "ci95": list(ci), "ci90": list(ci90)}
    return {"task": "SST-2", "seeds": [1, 2, 3], "methods": ["FFT", "LoRA_r8"], "equivalence_margin": 0.2,
            "per_method": {"FFT": {"rho(I_pre,U)": mc(0.09, (-0.06, 0.24), (-0.02, 0.2)),
                                   "partial_rho(I_pre,U)": mc(0.2, (0.05, 0.35), (0.08, 0.3))},
                           "LoRA_r8": {"rho(I_pre,U)": mc(-0.08, (-0.5, 0.35), (-0.35, 0.2)),
                                       "partial_rho(I_pre,U)": mc(0.1, (-0.3, 0.5), (-0.2, 0.4))}},
            "paired_tests": {"LoRA_r8 - FFT": {"rho(I_pre,U)": {"mean_difference": -0.17, "ci95": [-0.6, 0.26],
                                                                "t_p": 0.3, "t_p_holm": 1.0}}}}


def test_with_several_seeds_the_answer_starts_with_the_aggregate():
    m = _metrics(_pair(0.03, (-0.24, 0.30)), _pair(-0.27, (-0.49, -0.02)), -0.30, (-0.53, -0.06))
    m.update(task="SST-2", seed=2)
    m["headline"] = headline(m)
    block = answer_block([m], [_aggregate()])
    assert block[0].startswith("ANSWER (SST-2, seeds 1, 2, 3; mean over seeds")
    assert block[1:4] == [f"  {line}" for line in aggregate_lines(_aggregate())]
    assert block[1] == ("  FFT (3 seeds): across heads, no detectable relation (ρ(I_pre, U) = +0.09, 95% CI -0.06 to "
                        "+0.24); within layers, important heads change more than the others of their layer (ρ = "
                        "+0.20, 95% CI +0.05 to +0.35)")
    assert block[3] == ("  FFT vs LoRA_r8: no detectable difference in ρ(I_pre, U) (mean difference LoRA_r8 − FFT = "
                        "-0.17, 95% CI -0.60 to +0.26; exploratory, Holm-adjusted p = 1)")
    assert block[5].startswith("per seed (SST-2, seed 2)") and block[6:9] == [f"  {line}" for line in answer_lines(m)][:3]
    assert answer_block([m], [])[0].startswith("ANSWER (SST-2, seed 2)")


@pytest.mark.parametrize("mean", [None, float("nan")])
def test_no_subspace_line_without_a_mean_overlap(mean):
    """phi's mean undefined: null as compare writes it, NaN as steps.runs.read_compare reads it back."""
    from headplast.report.headline import subspace_line

    sub = {"k": 8, "random_subspaces": 0.25, "phi": {"mean": mean}, "noise_floor": {}}
    assert subspace_line({"labels": ["FFT", "LoRA_r8"], "subspace": sub}) == []
    sub["phi"]["mean"] = 0.5
    assert subspace_line({"labels": ["FFT", "LoRA_r8"], "subspace": sub})[0].startswith("FFT and LoRA_r8 share φ = 0.50")


def test_eval_examples_that_share_training_text_are_a_caution_on_the_answer():
    m = _metrics(_pair(0.15, (-0.10, 0.41)), _pair(0.04, (-0.30, 0.38)), -0.11, (-0.38, 0.19), p_holm=1.0)
    assert not any("caution" in line for line in headline(m))
    m["runs"]["FFT"].update(eval_source="holdout", eval_overlap={"any": 0, "examples": 6000, "fraction": 0.0})
    m["runs"]["LoRA_r8"].update(eval_source="validation", eval_overlap={"any": 30, "examples": 872,
                                                                        "fraction": 30 / 872})
    lines = headline(m)
    assert "caution" not in lines[0]
    assert lines[1].endswith("caution: 30 of 872 eval examples (3.4%) share text with training examples")
    m["runs"]["FFT"]["eval_source"] = "train"
    assert headline(m)[0].endswith("caution: measured on training examples (--eval-source train)")


def test_subspace_line_compares_phi_to_the_null_keeping_each_parts_share():
    from headplast.report.headline import subspace_line

    sub = {"k": 8, "random_subspaces": 0.06, "phi": {"mean": 0.29}, "noise_floor": {},
           "random_within_parts": {"mean": 0.21, "phi_minus_null": {"mean": 0.08, "ci95": [0.05, 0.11]}}}
    line = subspace_line({"labels": ["FFT", "LoRA_r8"], "subspace": sub})[0]
    assert "chance keeping each of Q, K, V, O's share of the directions 0.21, φ minus it +0.08 [+0.05, +0.11]" in line
    del sub["random_within_parts"]  # compare_metrics.json written before the null existed still renders
    assert "a baseline too weak" in subspace_line({"labels": ["FFT", "LoRA_r8"], "subspace": sub})[0]


def test_beyond_the_gradient_and_the_other_measures_of_change():
    """The partial ρ given grad_norm, W0 and the layer is a secondary verdict (Holm); the other
    measures of change are numbers with the answer's interval, no verdict, in the schemas' order."""
    from headplast.report.headline import beyond_lines, change_measures_lines

    m = _metrics(_pair(0.3, (0.1, 0.5)), _pair(-0.3, (-0.5, -0.1)), -0.6, (-0.9, -0.2))
    m["stats"]["FFT"]["pairs"]["I_pre~U"]["beyond"] = {"spearman": 0.38, "ci95_layers": [0.18, 0.58],
                                                       "ci90_layers": [0.2, 0.55], "p_layers": 0.001}
    m["stats"]["FFT"]["pairs"].update({"I_pre~func_change": _pair(0.2, (-0.1, 0.45), ci_examples=[-0.2, 0.4]),
                                       "I_pre~qk_rel": _pair(-0.25, (-0.5, -0.05))})
    m["secondary"]["tests"]["FFT: rho_beyond(I_pre,U)"] = {"p_holm": 0.14}
    assert beyond_lines(m) == [  # a CI that excludes 0 is not a claim when Holm's p is above 0.05
        "FFT: beyond the gradient at θ0, ||W0|| and the layer, importance adds no detectable prediction "
        "(ρ(I_pre, U | grad_norm, W0, layer) = +0.38, 95% CI +0.18 to +0.58; exploratory, Holm-adjusted p = 0.14)"]
    m["secondary"]["tests"]["FFT: rho_beyond(I_pre,U)"] = {"p_holm": 0.01}
    assert "importance predicts more change" in beyond_lines(m)[0]
    assert change_measures_lines(m) == [
        "FFT: importance vs other measures of change (descriptive): ρ(I_pre, qk_rel) = -0.25 [-0.50, -0.05], "
        "ρ(I_pre, func_change) = +0.20 [-0.20, +0.45]"]


def test_the_aggregate_verdict_keeps_each_seeds_own_uncertainty():
    """Two seeds that agree closely give a narrow t-interval over seeds (training randomness only:
    the seeds share the heads and the eval examples), while each seed's interval is wide: the
    verdict uses the wider, so 'no relation' (TOST) is not claimed from the seeds' agreement alone
    (the default experiment, seeds 1 and 2: FFT +0.12 and +0.14, each 95% CI about -0.06 to +0.48)."""
    from headplast.analysis.across import seed_intervals

    stats = [{"pairs": {"I_pre~U": _pair(r, (r - 0.2, r + 0.35), within=w, ci_within=(w - 0.3, w + 0.3))}}
             for r, w in ((0.12, 0.17), (0.14, 0.35))]
    iv = seed_intervals(stats)
    lo, hi = iv["rho(I_pre,U)"]["ci95"]
    assert lo == pytest.approx(np.tanh(np.mean(np.arctanh([-0.08, -0.06])))) and hi > 0.45
    agg = _aggregate()
    pm = agg["per_method"]["FFT"]
    pm["rho(I_pre,U)"].update({"mean": 0.13, "ci95": [-0.01, 0.26], "ci90": [0.06, 0.195]})
    assert "no relation (" in aggregate_lines(agg)[0]  # the t-interval alone: equivalence claimed
    pm["rho(I_pre,U)"].update({f"seed_{k}": v for k, v in iv["rho(I_pre,U)"].items()})
    line = aggregate_lines(agg)[0]
    assert "across heads, no detectable relation (ρ(I_pre, U) = +0.13, 95% CI -0.07 to +0.48)" in line
