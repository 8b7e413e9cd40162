"""Update geometry per head and intruder dimensions per matrix, against a direct numpy/scipy
computation that slices the weights itself (not through the adapters)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from headplast.arch import get_adapter
from headplast.measure.geometry import BASES_K, PARTS, STATS, field_name, max_cosines, update_geometry
from headplast.measure.update import qkvo_weights, update_magnitude
from tiny import ALL_ARCHS, tiny_model


def _reference_stats(m: np.ndarray) -> dict:
    s = np.linalg.svd(m, compute_uv=False)
    e = s ** 2
    k = next(i + 1 for i in range(len(e)) if e[:i + 1].sum() >= 0.9 * e.sum())
    return {"fro": np.sqrt((m ** 2).sum()), "srank": e.sum() / e.max(), "r90": k, "top_share": e.max() / e.sum()}


def _reference(m0, m1, arch):
    """Per head: Q/K/V rows h*d:(h+1)*d, O columns h*d:(h+1)*d, from named parameters."""
    cfg = m0.config
    H = getattr(cfg, "num_attention_heads", getattr(cfg, "n_heads", None))
    D = getattr(cfg, "hidden_size", getattr(cfg, "dim", None))
    d = getattr(cfg, "head_dim", None) or D // H
    kv = getattr(cfg, "num_key_value_heads", None) or H  # grouped-query attention: K/V rows of h's group,
    G = H // kv  # weighted 1/sqrt(group size) so the stacked update's squared norm is U^2
    names = {"distilbert": ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
             "mpnet": ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o")}.get(
        arch.split(":")[0], ("attention.self.query", "attention.self.key", "attention.self.value",
                             "attention.output.dense"))
    if arch == "gpt2":
        names = ("attn.c_attn", "attn.c_proj")
    if arch in ("llama", "qwen2", "mistral", "gemma"):
        names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    if arch.startswith("deberta"):
        names = ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                 "attention.output.dense")
    p0, p1 = dict(m0.named_parameters()), dict(m1.named_parameters())
    sep = {"gpt2": ".h."}.get(arch, ".layers." if any(".layers." in n for n in p0) else ".layer.")
    layers = sorted({int(n.split(sep)[1].split(".")[0]) for n in p0 if sep in n})
    out = {}
    for l in layers:
        dw = []
        for nm in names:
            key = next(n for n in p0 if f"{sep}{l}.{nm}.weight" in n)
            dw.append((p1[key] - p0[key]).detach().double().numpy())
        if arch == "gpt2":  # Conv1D [in, out]; Q, K, V: thirds of c_attn's output
            dw = [dw[0][:, i * D:(i + 1) * D].T for i in range(3)] + [dw[1].T]
        for h in range(H):
            s, g = slice(h * d, (h + 1) * d), slice(h // G * d, (h // G + 1) * d)
            parts = {"q": dw[0][s], "k": dw[1][g] / np.sqrt(G), "v": dw[2][g] / np.sqrt(G), "o": dw[3][:, s].T}
            parts["all"] = np.vstack([parts[k] for k in "qkvo"])
            out[(l, h)] = {p: _reference_stats(m) for p, m in parts.items()}, parts["all"]
    return out


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_geometry_equals_a_direct_svd_of_each_heads_update(arch):
    m0, m1 = tiny_model(arch, seed=0), tiny_model(arch, seed=1)
    ad = get_adapter(m0)
    w0, w1 = qkvo_weights(m0, ad), qkvo_weights(m1, ad)
    res = update_geometry(w0, w1, ad, m0.config)
    ref = _reference(m0, m1, arch)
    for (l, h), (stats, block) in ref.items():
        for p in PARTS:
            for s in STATS:
                assert getattr(res, field_name(s, p))[l, h] == pytest.approx(stats[p][s], rel=1e-9), (l, h, p, s)
        u = np.linalg.svd(block)[0][:, :BASES_K]  # the kept basis spans the same top subspace
        b = res.bases[l, h]
        assert np.allclose(b @ b.T, u @ u.T, atol=1e-8)
    U = update_magnitude(w0, w1, ad, m0.config)  # the Frobenius norms are U and its parts
    assert np.allclose(res.fro, U.U) and all(np.allclose(getattr(res, f"fro_{k}"), getattr(U, f"U_{k}"))
                                             for k in "qkvo")


def test_a_rank_r_lora_update_has_rank_at_most_r_per_part():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("bert")
    ad = get_adapter(model)
    w0 = qkvo_weights(model, ad)
    names = [ad.module_name(l, k) for l in range(2) for k in "qkvo"]
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=names, init_lora_weights=False))
    merged = pm.merge_and_unload()
    res = update_geometry(w0, qkvo_weights(merged, ad), ad, merged.config)
    assert (res.r90_q <= 2).all() and (res.srank_v <= 2 + 1e-6).all() and (res.r90 <= 8).all()
    assert (res.srank_q >= 1 - 1e-9).all() and (res.top_share <= 1).all()


def test_an_unchanged_head_has_zero_norm_and_no_rank():
    model = tiny_model("bert")
    ad = get_adapter(model)
    w0 = qkvo_weights(model, ad)
    w1 = {k: v.clone() for k, v in w0.items()}
    w1[(1, "v")][8:16] += 0.1  # head 1 of layer 1 (d = 8): V rows only
    res = update_geometry(w0, w1, ad, model.config)
    assert res.fro[0].sum() == 0 and np.isnan(res.srank[0]).all() and np.isnan(res.r90_q).all()
    assert res.fro_v[1, 1] > 0 and res.r90_v[1, 1] == 1 and res.top_share_v[1, 1] == pytest.approx(1)
    assert np.isnan(res.srank_v[1, 0]) and (res.bases[0] == 0).all()
    rows = {(r["layer"], r["module"]): r for r in res.intruders}
    assert len(rows) == 8 and rows[(0, "q")]["intruders"] == 0 and rows[(0, "q")]["max_cos"][0] == 1


@pytest.mark.parametrize("k,eps", [(10, 0.5), (4, 0.6), (32, 0.9)])
def test_intruders_equal_scipy(k, eps):
    m0, m1 = tiny_model("bert", seed=0), tiny_model("bert", seed=1)
    ad = get_adapter(m0)
    w0, w1 = qkvo_weights(m0, ad), qkvo_weights(m1, ad)
    w1 = {key: w0[key] + 0.3 * (w1[key] - w0[key]) for key in w0}  # some directions kept, some not
    rows = update_geometry(w0, w1, ad, m0.config, k=k, epsilon=eps).intruders
    counts = []
    for r in rows:
        a0, a1 = (w[(r["layer"], r["module"])].double().numpy() for w in (w0, w1))
        u0 = scipy.linalg.svd(a0)[0]
        u1 = scipy.linalg.svd(a1)[0][:, :k]
        best = np.abs(u1.T @ u0).max(axis=1)
        assert r["intruders"] == int((best < eps).sum()) and r["k"] == k and r["epsilon"] == eps
        assert np.allclose(r["max_cos"], best, atol=1e-5)
        counts.append(r["intruders"])
    assert 0 < sum(counts) < len(counts) * min(k, 32)  # the test sees both kinds of vectors


def test_a_planted_new_direction_is_an_intruder():
    torch.manual_seed(0)
    q0, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
    w0 = (q0[:, :16] * torch.linspace(1, 2, 16)) @ torch.randn(16, 32, dtype=torch.float64) / 6
    x = q0[:, 16:].sum(1) / 4  # unit vector in W0's left null space: no singular vector of W0 with
    w1 = w0 + 5 * torch.outer(x, torch.randn(32, dtype=torch.float64))  # a nonzero value points there
    cos = max_cosines(w0, w1, 4)
    assert cos[0] < 0.5 and (cos[1:] > 0.9).all()


def test_vectors_examined_counts_only_matrices_fine_tuning_changed(tmp_path):
    """A matrix LoRA left alone (every max_cos 1, no intruders) is not among the vectors examined;
    the code before counted every matrix's vectors (issue 29 item 9)."""
    import json

    import pandas as pd

    from headplast.steps.compare_step import update_shape

    rows = [{"layer": 0, "module": "q", "k": 3, "epsilon": 0.5, "max_cos": [0.9, 0.2, 0.4], "intruders": 1},
            {"layer": 0, "module": "o", "k": 3, "epsilon": 0.5, "max_cos": [1.0, 1.0, 1.0], "intruders": 0},
            {"layer": 1, "module": "v", "k": 3, "epsilon": 0.5, "max_cos": [1.0, 0.99, 1.0], "intruders": 0}]
    (tmp_path / "intruders.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = pd.DataFrame({"srank": [1.0, 2.0], "r90": [1.0, 2.0], "top_share": [0.5, 0.6]})
    shape = update_shape({"LoRA": tmp_path}, {"LoRA": df})["LoRA"]
    assert shape["matrices"] == 3 and shape["matrices_adapted"] == 2
    assert shape["vectors_examined"] == 6 and shape["intruders"] == 1
