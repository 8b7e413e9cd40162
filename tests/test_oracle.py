"""An oracle for head gating that shares nothing with it: the engine (and the naive reference)
remove head h by a pre-hook on O that gates slice h of O's input; the oracle runs a deep copy
of the model whose weights are edited, no hook (headplast.measure.naive.remove_head):

  o_columns: W_O[:, slice h] = 0            (O reads nothing of slice h)
  v_rows:    W_V[slice h], b_V[slice h] = 0 (head h's own values, hence its context, are 0)
  mean ablation: also O's bias += W_O[:, slice h] @ mean_h

Equal losses on every architecture show that the gate removes exactly head h (v_rows: the head
whose values V's rows slice h produce) and that replaying from layer l changes nothing else.
Resample ablation has no such edit (its replacement varies by example and position).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from headplast.arch import get_adapter
from headplast.measure import gating
from headplast.measure.ablation import ablation_importance
from headplast.measure.naive import EDITS, weight_edit_importance
from tiers import slow_except
from tiny import ALL_ARCHS, expand_kv, tiny_model

ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _engine(model, enc, task, pad_id, ablation):
    # small batches and token budget: several batches of mixed lengths, each layer's heads in several passes
    return ablation_importance(model, get_adapter(model), enc, task, pad_id, batch_size=4, ablation=ablation,
                               max_tokens=100, progress=False)


def _oracle(model, enc, task, pad_id, ablation, edit):
    # the engine's batch size: mean ablation's means (fp32 sums over batches) are then the same bit for bit
    return weight_edit_importance(model, get_adapter(model), enc, task, pad_id, batch_size=4, ablation=ablation,
                                  edit=edit)


def _assert_equal(engine, oracle, atol, what=""):
    # per-example losses are kept in fp32 (one rounding apart at most); importance and KL in fp64
    np.testing.assert_allclose(engine.losses, oracle.losses, atol=max(atol, 1e-6), rtol=0, err_msg=what)
    np.testing.assert_allclose(engine.importance, oracle.importance, atol=atol, rtol=0, err_msg=what)
    np.testing.assert_allclose(engine.kl, oracle.kl, atol=atol, rtol=0, err_msg=what)


# fp32 covers every case; fp64 tightens the tolerance to rounding alone (slow: twice the table)
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.float64, marks=pytest.mark.slow)],
                         ids=["fp32", "fp64"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("arch", slow_except(ALL_ARCHS, "bert", "deberta-v2:shared"))
def test_engine_equals_weight_edit_oracle(arch, ablation, dtype, enc_small, tok, rte):
    task, _ = rte
    model = tiny_model(arch, init=0.3).to(dtype)
    engine = _engine(model, enc_small, task, tok.pad_token_id, ablation)
    for edit in EDITS:
        # grouped-query attention: V's rows of a head are its group's; the oracle zeroes them in the
        # same model with one K/V copy per query head (weights edited, no hook)
        gqa = get_adapter(model).group_size(model.config) > 1
        edited = expand_kv(model).to(dtype) if gqa and edit == "v_rows" else model
        oracle = _oracle(edited, enc_small, task, tok.pad_token_id, ablation, edit)
        assert np.abs(oracle.importance).max() > 1e-3, "tiny model should have heads that matter"
        _assert_equal(engine, oracle, ATOL[dtype], f"{arch}, {ablation} ablation, oracle {edit}")


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_registered_measurements_equal_the_oracle(ablation, enc_small, tok, rte):
    """What `headplast measure` computes (importance_pre, importance_pre_mean), not only the function."""
    from headplast.measure import registry
    from headplast.measure.config import MeasureConfig

    task, _ = rte
    model = tiny_model("deberta-v2:conv", init=0.3)
    cfg = MeasureConfig(ablation=("zero", "mean"), batch_size=4, max_tokens=100, progress=False)
    x = SimpleNamespace(cfg=cfg, task=task, enc=enc_small, pad_id=tok.pad_token_id,
                        model=lambda which, exact=False: model)
    name = "importance_pre" if ablation == "zero" else "importance_pre_mean"
    res = registry.get(name).compute(x)
    oracle = _oracle(model, enc_small, task, tok.pad_token_id, ablation, "o_columns")
    _assert_equal(res, oracle, 1e-5)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_oracle_notices_a_gate_on_the_wrong_slice(ablation, monkeypatch, enc_small, tok, rte):
    """The oracle can fail where the naive reference cannot (it shares the gate): a gate that
    removes the neighbouring slice (head h+1 for head h) puts the right importances in the wrong
    places, and the comparison says so."""
    task, _ = rte
    model = tiny_model("bert", init=0.3)
    right = gating._gate_hook

    def shifted(n_heads, gate, mean, rows):
        return right(n_heads, gate.roll(1, -1), mean, rows)
    monkeypatch.setattr(gating, "_gate_hook", shifted)
    engine = _engine(model, enc_small, task, tok.pad_token_id, ablation)
    for edit in EDITS:
        oracle = _oracle(model, enc_small, task, tok.pad_token_id, ablation, edit)
        with pytest.raises(AssertionError):
            _assert_equal(engine, oracle, 1e-5)
        np.testing.assert_allclose(np.roll(engine.importance, 1, 1), oracle.importance, atol=1e-5)  # only moved


def test_resample_has_no_weight_edit(enc_small, tok, rte):
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="zero and mean"):
        weight_edit_importance(model, get_adapter(model), enc_small, rte[0], tok.pad_token_id, ablation="resample")
