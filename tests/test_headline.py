"""The three-line answer says what the intervals say, and nothing more."""

import pytest

from headplast.report.headline import headline


def _metrics(ci_fft, ci_lora, diff_ci, rho=(0.3, -0.3), collapsed=False, rel=0.9):
    def stats(r, ci):
        return {"pairs": {"I_pre~U": {"spearman": r, "ci95": ci, "ci95_examples": None}},
                "reliability": {"I_pre": {"reliability": rel}}}
    exceeds = diff_ci[0] > 0 or diff_ci[1] < 0
    return {"labels": ["FFT", "LoRA_r8"],
            "stats": {"FFT": stats(rho[0], ci_fft), "LoRA_r8": stats(rho[1], ci_lora)},
            "runs": {"FFT": {"collapsed": False}, "LoRA_r8": {"collapsed": collapsed}},
            "key_statistics": {"rho(I_pre,U)": {"FFT": rho[0], "LoRA_r8": rho[1], "difference": rho[1] - rho[0],
                                                "ci95": diff_ci, "exceeds_uncertainty": exceeds}}}


CASES = [
    ((0.1, 0.5), (-0.5, -0.1), (-0.9, -0.2),
     ["FFT: important heads change more than the others (ρ(I_pre, U) = +0.30, 95% CI [+0.10, +0.50])",
      "LoRA_r8: important heads change less than the others (ρ(I_pre, U) = -0.30, 95% CI [-0.50, -0.10])",
      "FFT vs LoRA_r8: ρ(I_pre, U) is lower under LoRA_r8 than under FFT (difference LoRA_r8 − FFT -0.60, "
      "95% CI [-0.90, -0.20])"]),
    ((-0.1, 0.5), (-0.5, 0.1), (-0.9, 0.1),
     ["FFT: important heads change no differently from the others (ρ(I_pre, U) = +0.30, 95% CI [-0.10, +0.50]; "
      "within noise)",
      "LoRA_r8: important heads change no differently from the others (ρ(I_pre, U) = -0.30, 95% CI [-0.50, +0.10]; "
      "within noise)",
      "FFT vs LoRA_r8: importance predicts the update no differently under the two (within noise) (difference "
      "LoRA_r8 − FFT -0.60, 95% CI [-0.90, +0.10])"]),
]


@pytest.mark.parametrize("ci_fft,ci_lora,diff_ci,expected", CASES)
def test_each_line_follows_its_interval(ci_fft, ci_lora, diff_ci, expected):
    assert headline(_metrics(ci_fft, ci_lora, diff_ci)) == expected


def test_the_wider_interval_decides_and_cautions_are_said():
    m = _metrics((0.1, 0.5), (0.1, 0.5), (-0.1, 0.1), collapsed=True, rel=0.5)
    m["stats"]["FFT"]["pairs"]["I_pre~U"]["ci95_examples"] = [-0.05, 0.4]  # examples disagree: not a claim
    lines = headline(m)
    assert "no differently" in lines[0] and "95% CI [-0.05, +0.50]" in lines[0]
    assert lines[1].endswith("caution: collapsed: no better than the majority class, I_pre reliability only 0.50")


def test_effect_lines_use_the_wider_interval():
    from headplast.report.headline import effect_lines

    m = _metrics((0.1, 0.5), (-0.5, -0.1), (-0.9, -0.2))
    m["stats"]["FFT"]["pairs"].update({"U~effect_fwd": {"spearman": 0.4, "ci95": [0.2, 0.6],
                                                        "ci95_examples": [-0.05, 0.55]},
                                       "I_pre~effect_fwd": {"spearman": 0.5, "ci95": [0.3, 0.7]}})
    assert effect_lines(m) == [  # LoRA_r8 has no update effect here: no line
        "FFT: the gain a head's own update carries vs its size: ρ(U, effect_fwd) = +0.40 (95% CI [-0.05, +0.60], "
        "within noise); vs its importance before: ρ(I_pre, effect_fwd) = +0.50 (95% CI [+0.30, +0.70])"]


@pytest.mark.parametrize("mean", [None, float("nan")])
def test_no_subspace_line_without_a_mean_overlap(mean):
    """phi's mean undefined: null as compare writes it, NaN as steps.runs.read_compare reads it back."""
    from headplast.report.headline import subspace_line

    sub = {"k": 8, "random_subspaces": 0.25, "phi": {"mean": mean}, "noise_floor": {}}
    assert subspace_line({"labels": ["FFT", "LoRA_r8"], "subspace": sub}) == []
    sub["phi"]["mean"] = 0.5
    assert subspace_line({"labels": ["FFT", "LoRA_r8"], "subspace": sub})[0].startswith("FFT and LoRA_r8 share φ = 0.50")
