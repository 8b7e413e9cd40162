"""Importance-guided LoRA ranks: the allocation keeps the parameter budget exactly, peft builds
exactly those ranks, and `train --rank-from --rank-by` records and trains them end to end."""

import json

import numpy as np
import pytest

from headplast.arch import get_adapter
from headplast.errors import HeadplastError
from headplast.measure.config import MeasureConfig
from headplast.steps.measure_step import run_measure
from headplast.steps.train_step import run_train
from headplast.train.config import TrainConfig
from headplast.train.lora import allocate_ranks, make_lora_model, module_scores, resolve_targets
from tiny import tiny_model, tiny_run_kwargs

RNG = np.random.default_rng(0)
ALLOCATION_CASES = [  # scores, caps (min(in, out) of square modules), r
    (RNG.random(24), 32, 8),
    (RNG.random(24) ** 8, 32, 8),  # very skewed: many at the cap
    (np.array([100.0, 0, 0, 0]), 16, 8),  # one module at its cap, the rest shared evenly
    (np.zeros(6), 16, 4),  # no information: uniform
    (np.array([1.0, 1, 1, 2, 3, 5]), 64, 1),
    (np.array([0.0, 0, 0, 3]), 64, 8),
]


@pytest.mark.parametrize("scores,cap,r", ALLOCATION_CASES)
def test_allocation_keeps_the_budget_exactly_and_follows_the_scores(scores, cap, r):
    names = [f"m{i}" for i in range(len(scores))]
    ranks = allocate_ranks(dict(zip(names, scores)), {n: (cap, cap) for n in names}, r)
    k = np.array([ranks[n] for n in names])
    assert k.sum() == r * len(names)  # same LoRA parameters as uniform r (all modules the same shape)
    assert k.min() >= 1 and k.max() <= cap
    order = np.argsort(scores, kind="stable")
    assert (np.diff(k[order]) >= -1).all()  # a higher score never gets fewer ranks (up to rounding)
    if scores.sum() == 0:
        assert (k == r).all()
    if (scores == 0).sum() and scores.sum() and k.max() < cap:
        assert k[scores == 0].max() == 1  # no score: the minimum, unless the scored ones are all capped


def test_allocation_matches_the_continuous_shares_within_one_rank():
    s = RNG.random(12)
    ranks = allocate_ranks({f"m{i}": v for i, v in enumerate(s)}, {f"m{i}": (384, 384) for i in range(12)}, 8)
    ideal = 1 + s / s.sum() * (8 * 12 - 12)  # no module at a cap: 1 + a share proportional to the score
    assert np.abs(np.array(list(ranks.values())) - ideal).max() < 1


def test_modules_of_other_shapes_are_allocated_within_their_group():
    scores = {"a": 5.0, "b": 1.0, "ffn_in": 0.1, "ffn_out": 9.0}
    shapes = {"a": (32, 32), "b": (32, 32), "ffn_in": (32, 64), "ffn_out": (64, 32)}
    ranks = allocate_ranks(scores, shapes, 4)
    params = sum(ranks[n] * sum(shapes[n]) for n in shapes)
    assert params == sum(4 * sum(s) for s in shapes.values())
    assert ranks["a"] + ranks["b"] == 8 and ranks["ffn_in"] + ranks["ffn_out"] == 8
    with pytest.raises(HeadplastError, match="not finite"):
        allocate_ranks({"a": float("nan"), "b": 1.0}, shapes, 4)
    with pytest.raises(HeadplastError, match="exceeds"):
        allocate_ranks({"a": 1.0}, {"a": (32, 32)}, 33)


def test_module_scores_aggregate_heads():
    model = tiny_model("bert")  # 2 layers, 4 heads
    ad = get_adapter(model)
    heads = {"I_pre": np.array([[1.0, -2, 3, 0], [0.5, 0.5, 0, 0]]),
             **{f"U_{k}": RNG.random((2, 4)) for k in "qkvo"}}
    targets = resolve_targets(ad, model, "attn,ffn")
    imp = module_scores("I_pre", heads, ad, targets, 2)
    assert imp[ad.module_name(0, "q")] == imp[ad.module_name(0, "o")] == imp[ad.ffn_names(0)[0]] == 4.0
    assert imp[ad.module_name(1, "v")] == 1.0
    upd = module_scores("U", heads, ad, targets, 2)
    assert np.isclose(upd[ad.module_name(1, "k")], np.linalg.norm(heads["U_k"][1]))
    assert np.isclose(upd[ad.ffn_names(1)[1]], np.sqrt(sum((heads[f"U_{k}"][1] ** 2).sum() for k in "qkvo")))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoders_module_shapes_scores_and_budget(arch):
    """GPT-2's Conv1D ([in, out]) and fused c_attn (its U: Q, K and V together), Llama's narrower K/V
    (grouped-query attention: a shape group of their own): the budget of uniform r is kept exactly."""
    from headplast.train.lora import module_shapes

    model = tiny_model(arch)
    ad = get_adapter(model)
    targets = resolve_targets(ad, model)
    shapes = module_shapes(model, targets)
    if arch == "gpt2":
        assert shapes == {n: (32, 96 if n.endswith("c_attn") else 32) for n in targets} and len(targets) == 4
    else:
        assert shapes[ad.module_name(0, "k")] == (32, 16) and shapes[ad.module_name(0, "q")] == (32, 32)
    heads = {f"U_{k}": RNG.random((2, 4)) for k in "qkvo"}
    upd = module_scores("U", heads, ad, targets, 2)
    qkv = np.sqrt(sum((heads[f"U_{k}"][1] ** 2).sum() for k in "qkv"))
    assert np.isclose(upd[ad.module_name(1, "q")], qkv if arch == "gpt2" else np.linalg.norm(heads["U_q"][1]))
    ranks = allocate_ranks(upd, shapes, 4)
    assert sum(k * sum(shapes[n]) for n, k in ranks.items()) == sum(4 * sum(shapes[n]) for n in targets)


def test_peft_builds_exactly_the_pattern_with_lora_scale_kept():
    """12 layers: 'layer.1.' must not also match 'layer.11.' (peft reads pattern keys as regexes)."""
    model = tiny_model("bert", layers=12)
    ad = get_adapter(model)
    targets = resolve_targets(ad, model, "attn")
    ranks = allocate_ranks({n: float(i % 7) for i, n in enumerate(targets)}, {n: (32, 32) for n in targets}, 4)
    pm = make_lora_model(model, ad, 4, 8.0, 0.0, targets, ranks)
    found = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    assert set(found) == set(targets)
    for n, m in found.items():
        assert m.lora_A["default"].weight.shape[0] == m.lora_B["default"].weight.shape[1] == ranks[n]
        assert m.scaling["default"] == pytest.approx(8.0 / 4)  # alpha / r of uniform r for every module
    lora = sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n and p.requires_grad)
    assert lora == 4 * len(targets) * (32 + 32)
    assert len(set(ranks.values())) > 2


@pytest.fixture(scope="module")
def source(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    kw = tiny_run_kwargs(model_dirs["bert"], root)
    fft = run_train(TrainConfig(method="fft", **kw)).path
    run_measure(fft, MeasureConfig(progress=False))
    return kw, fft


@pytest.mark.slow
@pytest.mark.parametrize("by", ["U", "I_pre"])
def test_guided_run_trains_and_records_its_pattern(source, by):
    kw, fft = source
    out = run_train(TrainConfig(method="lora", lora_r=4, lora_alpha=8, rank_by=by, rank_from=str(fft), **kw)).path
    assert out.name == f"seed1_r4_by_{by}"
    rc = json.loads((out / "run_config.json").read_text())
    pat = rc["rank_pattern"]
    assert pat["by"] == by and pat["from"] == str(fft) and pat["measurement"] in ("update", "importance_pre")
    assert sum(pat["ranks"].values()) == 4 * 8 and pat["lora_parameters"] == pat["uniform_lora_parameters"]
    assert rc["trainable"]["groups"]["lora"]["trainable"] == pat["uniform_lora_parameters"]
    assert "--rank-by " + by in rc["command"] and rc["label"] == f"LoRA_r4_by_{by}"
    cfg = json.loads((out / "ckpt_final" / "adapter_config.json").read_text())
    assert sorted(cfg["rank_pattern"].values()) == sorted(pat["ranks"].values())
    assert run_measure(out, MeasureConfig(progress=False)).status == "ran"  # measurable like any run
    assert run_train(TrainConfig(method="lora", lora_r=4, lora_alpha=8, rank_by=by, rank_from=str(fft),
                                 **kw)).status == "skipped"


@pytest.mark.slow
def test_guided_ranks_refuse_what_cannot_guide(source, tmp_path):
    kw, fft = source
    with pytest.raises(HeadplastError, match="needs --rank-from"):
        run_train(TrainConfig(method="lora", rank_by="U", **kw))
    with pytest.raises(HeadplastError, match="needs --method lora"):
        TrainConfig(method="fft", rank_by="U", **kw)
    with pytest.raises(HeadplastError, match="no run at"):  # not a run
        run_train(TrainConfig(method="lora", rank_by="U", rank_from=str(tmp_path), **kw))
    with pytest.raises(HeadplastError, match="task RTE"):
        run_train(TrainConfig(method="lora", rank_by="U", rank_from=str(fft), **{**kw, "task": "MRPC"}))
    unmeasured = run_train(TrainConfig(method="fft", **{**kw, "output_root": str(tmp_path / "other")})).path
    with pytest.raises(HeadplastError, match="has no update measurement"):
        run_train(TrainConfig(method="lora", rank_by="U", rank_from=str(unmeasured), **kw))
