"""K/V-group rows (analysis.groups): each group value against the group's weights read directly."""

import numpy as np
import pandas as pd
import pytest
import torch

from headplast.analysis.config import AnalysisConfig
from headplast.analysis.groups import group_table
from headplast.analysis.run_analysis import analyse
from headplast.arch import get_adapter
from headplast.measure.update import qkvo_weights, update_magnitude
from tiny import tiny_model


@pytest.mark.parametrize("arch,heads", [("llama", 4), ("gemma", 4), ("llama", 8)])
def test_group_norms_are_the_groups_own_weight_norms(arch, heads):
    """U_k of a group is ||ΔW_K^g||_F of its K/V head's rows, U the norm of every Q/K/V/O parameter of
    the group's heads (K/V counted once), W0 the same of θ0; I_pre the sum over the group's heads."""
    m0, m1 = tiny_model(arch, heads=heads, seed=0), tiny_model(arch, heads=heads, seed=1)
    ad, cfg = get_adapter(m0), m0.config
    L, H, G, d = ad.num_layers(cfg), ad.num_heads(cfg), ad.group_size(cfg), ad.head_dim(cfg)
    assert G > 1
    res = update_magnitude(qkvo_weights(m0, ad), qkvo_weights(m1, ad), ad, cfg)
    rng = np.random.default_rng(0)
    I_pre = rng.normal(size=(L, H))
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                       "I_pre": I_pre.ravel(), "U": res.U.ravel(), "U_k": res.U_k.ravel(), "U_v": res.U_v.ravel(),
                       "W0": res.W0.ravel()})
    gt = group_table(df, G)
    assert len(gt) == L * H // G
    for r in gt.itertuples():
        l, g = r.layer, r.kv_group
        att0, att1 = m0.model.layers[l].self_attn, m1.model.layers[l].self_attn
        rows, cols = slice(g * d, (g + 1) * d), slice(g * G * d, (g + 1) * G * d)  # K/V head g; its query heads
        dk = (att1.k_proj.weight - att0.k_proj.weight)[rows]
        dv = (att1.v_proj.weight - att0.v_proj.weight)[rows]
        dq = (att1.q_proj.weight - att0.q_proj.weight)[cols]
        do = (att1.o_proj.weight - att0.o_proj.weight)[:, cols]
        with torch.no_grad():
            full = torch.sqrt(sum((x.double() ** 2).sum() for x in (dq, dk, dv, do))).item()
            w0 = torch.sqrt(sum((x.weight.double()[s] ** 2).sum() for x, s in
                                ((att0.q_proj, cols), (att0.k_proj, rows), (att0.v_proj, rows)))
                            + (att0.o_proj.weight.double()[:, cols] ** 2).sum()).item()
        assert r.U_k == pytest.approx(torch.linalg.norm(dk.double()).item(), rel=1e-10)
        assert r.U_v == pytest.approx(torch.linalg.norm(dv.double()).item(), rel=1e-10)
        assert r.U == pytest.approx(full, rel=1e-10)
        assert r.W0 == pytest.approx(w0, rel=1e-10)
        assert r.I_pre == pytest.approx(I_pre[l, g * G:(g + 1) * G].sum(), rel=1e-12)


def test_group_measurements_must_be_equal_within_a_group():
    df = pd.DataFrame({"layer": [0] * 4, "head": range(4), "group_effect_fwd": [1.0, 1.0, 2.0, 2.5]})
    with pytest.raises(ValueError, match="differs between heads of one K/V group"):
        group_table(df, 2)
    with pytest.raises(ValueError, match="do not split into K/V groups"):
        group_table(df, 3)


def test_grouped_query_runs_get_group_statistics_and_others_do_not():
    """A known truth: the group update U_k follows the groups' summed importance exactly (ρ = 1);
    per query head the 1/G shares tie G heads, and stats without groups has no kv_groups."""
    L, H, G = 6, 8, 4
    rng = np.random.default_rng(1)
    I = rng.gamma(2.0, size=(L, H))
    group_I = I.reshape(L, H // G, G).sum(-1)  # [L, n_kv]
    u_k = np.repeat(np.sqrt(np.sqrt(group_I) / G), G, axis=1)  # per query head: a 1/G share of (group_I)^(1/2)
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                       "I_pre": I.ravel(), "U": rng.random(L * H), "U_k": u_k.ravel(), "U_v": rng.random(L * H)})
    cfg = AnalysisConfig(n_boot=200, n_perm=50)
    st, _ = analyse(df, [("I_pre", "U")], None, cfg, group_size=G)
    g = st["kv_groups"]
    assert g["group_size"] == G and g["n_groups"] == L * H // G
    assert g["pairs"]["I_pre~U_k"]["spearman"] == pytest.approx(1.0)
    assert g["table"]["U_k"][0] == pytest.approx(np.sqrt(group_I[0, 0]) ** 0.5)
    assert "I_pre~group_effect_fwd" not in g["pairs"]  # not measured: no row
    st1, _ = analyse(df, [("I_pre", "U")], None, cfg)
    assert "kv_groups" not in st1


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_group_importance_equals_zeroing_the_groups_O_columns(arch, enc_small, tok, rte):
    """A K/V group's importance (its query heads removed at once) against a weight edit: W_O's columns
    of the group's heads zeroed in a copy (no hook), per example."""
    import copy

    from headplast.data.tokenize import collate
    from headplast.measure.ablation import ablation_importance, example_losses, group_importance

    task = rte[0]
    model = tiny_model(arch, init=0.3)
    ad = get_adapter(model)
    L, H, G, d = ad.num_layers(model.config), ad.num_heads(model.config), ad.group_size(model.config), \
        ad.head_dim(model.config)
    got = ablation_importance(model, ad, enc_small, task, tok.pad_token_id, batch_size=4, max_tokens=100,
                              progress=False, group_size=G)
    assert got.importance.shape == (L, H // G)
    batch = collate(enc_small.features, tok.pad_token_id)
    batch.pop("labels", None)
    labels = torch.as_tensor(enc_small.labels)
    with torch.no_grad():
        base = example_losses(model(**batch).logits, labels, False)
        ref = np.zeros((L, H // G))
        for l in range(L):
            for g in range(H // G):
                m = copy.deepcopy(model)
                m.model.layers[l].self_attn.o_proj.weight[:, g * G * d:(g + 1) * G * d] = 0
                ref[l, g] = (example_losses(m(**batch).logits, labels, False) - base).double().mean().item()
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(got.importance, ref, atol=1e-5, rtol=0)
    both = group_importance(model, model, ad, enc_small, task, tok.pad_token_id, batch_size=4, max_tokens=100,
                            progress=False)
    np.testing.assert_allclose(both.group_I_pre, np.repeat(got.importance, G, axis=1), atol=0)  # one row per query head
