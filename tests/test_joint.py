"""Joint update effect (headplast.measure.joint: every head of a layer, and of the model, updated
at once) against an independent reference: a deep copy of theta0 with the layer's Q/K/V weights and
biases and O's weight copied from theta1, one plain full forward pass (no replay); a theta1 that
differs in one head only gives that head's effect_fwd; and the interactions of the analysis
(headplast.analysis.interactions) against scipy's t-interval."""

import copy

import numpy as np
import pytest
import torch
from scipy import stats

from headplast.analysis.interactions import interactions
from headplast.arch import get_adapter
from headplast.measure.ablation import example_losses
from headplast.measure.effect import update_effect
from headplast.measure.joint import update_joint
from test_effect import model_pair
from tiers import slow_except
from tiny import ALL_ARCHS, tiny_model


def _reference(m0, m1, ad, enc, pad_id):
    """[N, L + 2]: theta0's losses, each layer's heads copied from theta1, every layer's."""
    from headplast.data.tokenize import sorted_batches

    L = ad.num_layers(m0.config)
    out = np.zeros((len(enc), L + 2))
    for col, layers in [(0, []), *((1 + l, [l]) for l in range(L)), (L + 1, list(range(L)))]:
        m = copy.deepcopy(m0)
        with torch.no_grad():
            for l in layers:
                for kind in ("q", "k", "v", "o"):
                    mine, theirs = ad.linear(m, l, kind), ad.linear(m1, l, kind)
                    mine.weight.copy_(theirs.weight)
                    if kind != "o" and mine.bias is not None:
                        mine.bias.copy_(theirs.bias)
            for idx, batch in sorted_batches(enc, 5, pad_id):
                labels = batch.pop("labels")
                out[idx, col] = example_losses(m(**batch).logits, labels, False).double().numpy()
    return out


@pytest.mark.parametrize("arch", slow_except(ALL_ARCHS, "bert", "deberta-v2:conv"))
@pytest.mark.parametrize("theta1", ["trained", "lora"])
def test_joint_losses_equal_a_patched_copy(arch, theta1, enc_small, tok, rte):
    task, _ = rte
    m0, m1, ad = model_pair(arch, theta1)
    before1 = {k: v.clone() for k, v in m1.state_dict().items()}
    res = update_joint(m0, m1, ad, enc_small, task, tok.pad_token_id, batch_size=4, progress=False)
    assert all(torch.equal(before1[k], v) for k, v in m1.state_dict().items())  # the tensors swapped back
    ref = _reference(m0, m1, ad, enc_small, tok.pad_token_id)
    gains = ref[:, :1] - ref[:, 1:]
    assert np.abs(gains.mean(0)).max() > 1e-3, "updates should matter"
    np.testing.assert_allclose(res.losses, ref, atol=1e-5, rtol=0)
    L, H = 2, 4
    np.testing.assert_allclose(res.layer_joint_fwd, np.repeat(gains[:, :L].mean(0)[:, None], H, 1), atol=1e-5)
    rows = res.extra_files()["joint_effect.jsonl"]
    assert [(r["scope"], r["layer"]) for r in rows] == [("layer", 0), ("layer", 1), ("model", None)]
    np.testing.assert_allclose([r["joint_fwd"] for r in rows], gains.mean(0), atol=1e-5)
    np.testing.assert_allclose([r["joint_fwd_se"] for r in rows], gains.std(0, ddof=1) / np.sqrt(len(gains)),
                               atol=1e-6)
    # the models are left as they were
    for p0, p in zip(tiny_model(arch, init=0.3).state_dict().values(), m0.state_dict().values()):
        assert torch.equal(p0, p)


def _moved_heads(m0, heads, seed=1, scale=0.3):
    """theta1 = theta0 with only `heads` [(layer, head)] moved (their Q/K/V rows and biases, O columns)."""
    ad = get_adapter(m0)
    m1 = copy.deepcopy(m0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for l, h in heads:
            s = ad.head_slice(m1.config, h)
            for kind in ("q", "k", "v"):
                lin = ad.linear(m1, l, kind)
                lin.weight[s] += scale * torch.randn(lin.weight[s].shape, generator=g)
                lin.bias[s] += scale * torch.randn(lin.bias[s].shape, generator=g)
            o = ad.linear(m1, l, "o")
            o.weight[:, s] += scale * torch.randn(o.weight[:, s].shape, generator=g)
    return m1.eval()


def _both(m0, m1, enc, task, pad_id):
    ad = get_adapter(m0)
    eff = update_effect(m0, m1, ad, enc, task, pad_id, 4, progress=False)
    joint = update_joint(m0, m1, ad, enc, task, pad_id, 4, progress=False)
    return eff, joint, interactions(joint.losses, eff.fwd_values)


def test_one_moved_head_is_its_layers_joint_effect_and_interacts_with_nothing(enc_small, tok, rte):
    task, _ = rte
    m0 = tiny_model("bert", init=0.3).eval()
    eff, joint, inter = _both(m0, _moved_heads(m0, [(1, 2)]), enc_small, task, tok.pad_token_id)
    assert abs(eff.effect_fwd[1, 2]) > 1e-3
    np.testing.assert_allclose(joint.layer_joint_fwd[1], eff.effect_fwd[1, 2], atol=1e-6)
    np.testing.assert_allclose(joint.layer_joint_fwd[0], 0, atol=1e-6)
    for row in (inter["layers"][1], inter["model"]):
        np.testing.assert_allclose(row["joint"], eff.effect_fwd[1, 2], atol=1e-6)
        np.testing.assert_allclose(row["sum_single"], eff.effect_fwd[1, 2], atol=1e-6)
        assert abs(row["interaction"]) < 1e-6 and abs(row["ratio"] - 1) < 1e-4
        assert row["ci95"][0] <= 1e-6 and row["ci95"][1] >= -1e-6


def test_two_moved_heads_of_a_layer_interact(enc_small, tok, rte):
    task, _ = rte
    m0 = tiny_model("bert", init=0.3).eval()
    eff, joint, inter = _both(m0, _moved_heads(m0, [(0, 0), (0, 1)], scale=1.0), enc_small, task,
                              tok.pad_token_id)
    row = inter["layers"][0]
    np.testing.assert_allclose(row["sum_single"], eff.effect_fwd[0, :2].sum(), atol=1e-6)
    np.testing.assert_allclose(row["joint"], joint.layer_joint_fwd[0, 0], atol=1e-6)
    assert abs(row["interaction"]) > 1e-4


def test_interactions_against_a_known_interaction_and_scipys_t_interval():
    """Synthetic losses: L = 2 layers of H = 3 heads, N = 30 examples; the effect file holds the
    NEGATED losses (UpdateEffectResult.fwd_values), the joint file the losses."""
    rng = np.random.default_rng(0)
    N, L, H = 30, 2, 3
    base = 1 + rng.random(N)
    single = 0.1 * rng.random((N, L * H))  # per-example gain of each head alone
    extra = np.array([0.05, -0.02])[None, :] + 0.03 * rng.normal(size=(N, L))  # per-layer interaction
    model_extra = 0.04 + 0.03 * rng.normal(size=N)
    fwd_values = -np.hstack([base[:, None], base[:, None] - single])  # as update_effect stores them
    layer_gain = single.reshape(N, L, H).sum(2) + extra
    joint = np.hstack([base[:, None], base[:, None] - layer_gain, (base - single.sum(1) - model_extra)[:, None]])
    out = interactions(joint, fwd_values)
    assert out["n_examples"] == N and len(out["layers"]) == L
    for row, diff, s, j in [*((out["layers"][l], extra[:, l], single[:, l * H:(l + 1) * H].sum(1), layer_gain[:, l])
                              for l in range(L)),
                            (out["model"], model_extra, single.sum(1), single.sum(1) + model_extra)]:
        np.testing.assert_allclose(row["interaction"], diff.mean(), atol=1e-12)
        np.testing.assert_allclose(row["sum_single"], s.mean(), atol=1e-12)
        np.testing.assert_allclose(row["joint"], j.mean(), atol=1e-12)
        np.testing.assert_allclose(row["ratio"], j.mean() / s.mean(), rtol=1e-12)
        lo, hi = stats.t.interval(0.95, N - 1, loc=diff.mean(), scale=stats.sem(diff))
        np.testing.assert_allclose(row["ci95"], [lo, hi], atol=1e-12)
    assert out["model"]["layer"] is None and [r["layer"] for r in out["layers"]] == [0, 1]


def test_interactions_refuse_files_of_different_models():
    with pytest.raises(ValueError, match="layers"):
        interactions(np.zeros((5, 4)), np.zeros((5, 1 + 7)))  # 2 layers, 7 heads


FAST = ["--n-boot", "100", "--n-perm", "20", "--n-boot-examples", "20"]


def _pipeline(root, **kw):
    """Synthetic FFT (all heads at once gain 0.05 nats less per layer than the sum of each alone)
    and LoRA (they add up) runs, analysed, compared and reported."""
    import json

    from headplast.cli.main import main
    from synthetic import make_run

    dirs = {"FFT": make_run(root, "FFT", 1, coupling=1.0, interaction=-0.05, **kw),
            "LoRA_r8": make_run(root, "LoRA_r8", 1, coupling=0.2, **kw)}
    for label in dirs:
        assert main(["plot", "--task", "RTE", "--seed", "1", "--method-label", label, "--output-root", str(root),
                     *FAST]) == 0
    assert main(["compare", "--seed", "1", "--lora-r", "8", "--output-root", str(root), *FAST]) == 0
    assert main(["report", "--output-root", str(root)]) == 0
    d = root / "COMPARE" / "RTE" / "seed1"
    return {"stats": {lab: json.loads((p / "stats.json").read_text()) for lab, p in dirs.items()},
            "metrics": json.loads((d / "compare_metrics.json").read_text()),
            "summary": (d / "compare_summary.txt").read_text(), "report": (root / "report.html").read_text()}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    return {"with": _pipeline(tmp_path_factory.mktemp("joint")),
            "without": _pipeline(tmp_path_factory.mktemp("nojoint"), without=("update_joint",))}


def test_the_analysis_stores_the_interactions_of_a_run_that_has_them(reported):
    fft, lora = (reported["with"]["stats"][lab]["interactions"] for lab in ("FFT", "LoRA_r8"))
    assert len(fft["layers"]) == 4 and fft["n_examples"] == 40
    np.testing.assert_allclose(fft["model"]["interaction"], -0.2, atol=1e-5)  # 4 layers x -0.05
    np.testing.assert_allclose([r["interaction"] for r in fft["layers"]], -0.05, atol=1e-5)
    assert fft["model"]["ci95"][1] < 0 and lora["model"]["ci95"][0] < 0 < lora["model"]["ci95"][1]
    assert reported["with"]["metrics"]["stats"]["FFT"]["interactions"] == fft  # carried into the comparison
    assert all("interactions" not in st for st in reported["without"]["stats"].values())


def test_the_summary_report_and_answer_say_whether_the_effects_add_up(reported):
    out = reported["with"]
    summary, page = out["summary"], out["report"]
    lines = summary.splitlines()
    effect = [x for x in lines if "the gain a head's own update carries" in x]
    fft_line = next(x for x in effect if x.strip().startswith("FFT:"))
    lora_line = next(x for x in effect if x.strip().startswith("LoRA_r8:"))
    assert "the heads' single effects do not add up: all heads' updates at once gain" in fft_line
    assert "interaction -0.2000, 95% CI" in fft_line and "do not add up" not in lora_line
    assert "  Interactions: do the heads' update effects add up?" in summary
    # inside the update-effect section, before the next one
    start = next(i for i, x in enumerate(lines) if x.startswith("## ") and "Update effect" in x)
    end = next(i for i, x in enumerate(lines) if i > start and x.startswith("## "))
    block = "\n".join(lines[start:end])
    assert "FFT, whole model:" in block and ": they do not add up" in block
    assert "LoRA_r8, whole model:" in block and ": no detectable interaction" in block
    assert "FFT, ratio per layer (* interval excludes 0, unadjusted for the 4 layers): L0 " in block and "L3 " in block
    assert "Interactions in the update effect" in page and "whole model" in page
    assert "the heads&#39; single effects do not add up" in page  # the answer, HTML-escaped


def test_nothing_is_said_of_interactions_for_runs_measured_before_them(reported):
    from headplast.measure import registry

    assert "update_joint" not in {m.name for m in registry.required()}  # computed by default, not required to read
    out = reported["without"]
    assert "Interactions" not in out["summary"] and "add up" not in out["summary"]
    assert "Interactions in the update effect" not in out["report"] and "add up" not in out["report"]
