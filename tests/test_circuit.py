"""Circuit updates ΔQK / ΔOV per head and the amplification factor per matrix (headplast.measure.circuit)
against an independent float64 numpy reference that slices the named parameters itself and forms
the [D+1, D] / [D, D+1] maps explicitly; and the reparametrisation test: a random invertible map of
each head's Q/K and V/O leaves the logits and the circuit columns as they were while U changes."""

import copy

import numpy as np
import pytest
import torch

from headplast.arch import get_adapter
from headplast.measure.circuit import AMP_DRAWS, amplification_rows, circuit_result, product_svals
from headplast.measure.update import qkvo_weights, update_magnitude
from tiers import slow_except
from tiny import ALL_ARCHS, DECODERS, tiny_model

ARCH_TIERS = slow_except(ALL_ARCHS, "bert", "deberta-v2:shared")  # every architecture in the full suite
NAMES = {"distilbert": ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
         "mpnet": ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"),
         "deberta-v2": ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                        "attention.output.dense")}
BERT = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")


def _params(model, arch):
    """{layer: (Wq, bq, Wk, bk, Wv, bv, Wo)} in float64 numpy [out, in], from the named parameters
    (zero biases where a module has none; GPT-2's Conv1D transposed and cut into thirds)."""
    p = {n: t.detach().double().numpy() for n, t in model.named_parameters()}
    fam = arch.split(":")[0]
    out = {}
    if fam == "gpt2":
        for l in sorted({int(n.split(".h.")[1].split(".")[0]) for n in p if ".h." in n}):
            w, b = p[f"transformer.h.{l}.attn.c_attn.weight"].T, p[f"transformer.h.{l}.attn.c_attn.bias"]
            D = w.shape[1]
            (wq, wk, wv), (bq, bk, bv) = (w[i * D:(i + 1) * D] for i in range(3)), (b[i * D:(i + 1) * D] for i in range(3))
            out[l] = (wq, bq, wk, bk, wv, bv, p[f"transformer.h.{l}.attn.c_proj.weight"].T)
        return out
    if fam in DECODERS:
        for l in sorted({int(n.split(".layers.")[1].split(".")[0]) for n in p if ".layers." in n}):
            pre = f"model.layers.{l}.self_attn."
            get = lambda k: (p[pre + f"{k}_proj.weight"], p.get(pre + f"{k}_proj.bias",  # noqa: E731
                                                             np.zeros(p[pre + f"{k}_proj.weight"].shape[0])))
            out[l] = (*get("q"), *get("k"), *get("v"), p[pre + "o_proj.weight"])
        return out
    names = NAMES.get(fam, BERT)
    layers = sorted({int(n.split(".layer.")[1].split(".")[0]) for n in p if ".layer." in n})
    for l in layers:
        get = lambda nm, what: p[next(n for n in p if n.endswith(f".layer.{l}.{nm}.{what}"))]  # noqa: E731
        q, k, v, o = names
        out[l] = (get(q, "weight"), get(q, "bias"), get(k, "weight"), get(k, "bias"), get(v, "weight"),
                  get(v, "bias"), get(o, "weight"))
    return out


def _maps(prm, h, d):
    """QK = [W_Q^h, b_Q^h]ᵀ W_K^g and OV = W_O^h [W_V^g, b_V^g], materialised; g = h // G, the K/V
    group of query head h (G = 1 without grouped-query attention)."""
    wq, bq, wk, _, wv, bv, wo = prm
    s = slice(h * d, (h + 1) * d)
    g = h // (wq.shape[0] // wk.shape[0])
    sg = slice(g * d, (g + 1) * d)
    qk = np.hstack([wq[s], bq[s, None]]).T @ wk[sg]
    ov = wo[:, s] @ np.hstack([wv[sg], bv[sg, None]])
    return qk, ov


def _srank(m):
    sv = np.linalg.svd(m, compute_uv=False)
    return (sv ** 2).sum() / sv[0] ** 2 if sv[0] > 0 else np.nan


def reference(m0, m1, arch):
    H = get_adapter(m0).num_heads(m0.config)
    p0, p1 = _params(m0, arch), _params(m1, arch)
    assert p0, "no layer found: the reference would check nothing"
    out = {}
    for l in p0:
        d = p0[l][0].shape[0] // H
        for h in range(H):
            (qk0, ov0), (qk1, ov1) = _maps(p0[l], h, d), _maps(p1[l], h, d)
            out[(l, h)] = {"qk_rel": np.linalg.norm(qk1 - qk0) / np.linalg.norm(qk0),
                           "ov_rel": np.linalg.norm(ov1 - ov0) / np.linalg.norm(ov0),
                           "qk_srank": _srank(qk1 - qk0), "ov_srank": _srank(ov1 - ov0)}
    return out


@torch.no_grad()
def _base(arch):
    """θ0: a tiny model with nonzero biases (from_config starts them at zero, which would hide them)."""
    m0 = tiny_model(arch, seed=0, init=0.2)
    g = torch.Generator().manual_seed(7)
    for n, p in m0.named_parameters():
        if n.endswith(".bias"):
            p += 0.2 * torch.randn(p.shape, generator=g)
    return m0


def _near(m0, seed=1, scale=0.3):
    """θ1 = θ0 plus a random change of every parameter (so the update is small against θ0)."""
    m1 = copy.deepcopy(m0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m1.parameters():
            p += scale * p.std().nan_to_num(0.2) * torch.randn(p.shape, generator=g)
    return m1


@pytest.mark.parametrize("arch", ARCH_TIERS)
def test_circuit_updates_equal_explicit_maps(arch):
    m0 = _base(arch)
    m1 = _near(m0)
    res = circuit_result(m0, m1)
    for (l, h), ref in reference(m0, m1, arch).items():
        for col, v in ref.items():
            assert getattr(res, col)[l, h] == pytest.approx(v, rel=1e-9), (arch, l, h, col)
    assert (res.qk_rel > 0).all() and (res.ov_srank > 1).all()


def _projector(vectors):
    return vectors @ vectors.T


@pytest.mark.parametrize("arch", ARCH_TIERS)
def test_circuit_bases_and_their_theta0_span_energies_equal_the_explicit_maps(arch):
    """circuit_bases.npy per side = the top-k singular subspace of the materialised ΔQK / ΔOV (as
    projectors: the vectors' signs are arbitrary), and each vector's energy inside the row space of
    θ0's factor on that side (a pseudo-inverse projector) as circuit_subspaces.jsonl says."""
    m0 = _base(arch)
    _check_circuit_bases(m0, _near(m0), arch)


@torch.no_grad()
def test_circuit_bases_without_biases_equal_the_explicit_maps():
    """A family whose Q/K/V biases are zero and stay so (a LoRA leaves them): the bias coordinate of
    the sides of D + 1 is 0 in both runs, and the bases and span energies still match."""
    m0 = _base("bert")
    m1 = _near(m0)
    for m in (m0, m1):
        for n, prm in m.named_parameters():
            if ".attention.self." in n and n.endswith(".bias"):
                prm.zero_()
    res = _check_circuit_bases(m0, m1, "bert")
    assert not res.bases[0, :, :, -1].any() and not res.bases[3, :, :, -1].any()


def _check_circuit_bases(m0, m1, arch):
    from headplast.store.schema import CIRCUIT_SIDES

    res = circuit_result(m0, m1)
    H = get_adapter(m0).num_heads(m0.config)
    p0, p1 = _params(m0, arch), _params(m1, arch)
    assert p0, "no layer found: the reference would check nothing"
    rows = {(r["layer"], r["head"], r["circuit"], r["side"]): r for r in res.subspaces}
    k = 3
    for l in p0:
        d = p0[l][0].shape[0] // H
        D = p0[l][0].shape[1]
        for h in range(H):
            (qk0, ov0), (qk1, ov1) = _maps(p0[l], h, d), _maps(p1[l], h, d)
            wq, bq, wk, _, wv, bv, wo = p0[l]
            sl = slice(h * d, (h + 1) * d)
            g = h // (wq.shape[0] // wk.shape[0])  # the K/V group (grouped-query attention)
            sg = slice(g * d, (g + 1) * d)
            theta0_rows = {("qk", "left"): np.hstack([wq[sl], bq[sl, None]]), ("qk", "right"): wk[sg],
                           ("ov", "left"): wo[:, sl].T, ("ov", "right"): np.hstack([wv[sg], bv[sg, None]])}
            for c, delta in (("qk", qk1 - qk0), ("ov", ov1 - ov0)):
                u, sv, vt = np.linalg.svd(delta)
                assert sv[k - 1] > 1.01 * sv[k]  # a gap: the top-k subspace is defined
                for side, ref in (("left", u[:, :k]), ("right", vt[:k].T)):
                    i = CIRCUIT_SIDES.index((c, side))
                    got = res.bases[i, l, h, :ref.shape[0], :k].astype(np.float64)
                    assert np.abs(_projector(got) - _projector(ref)).max() < 1e-4, (arch, l, h, c, side)
                    assert not res.bases[i, l, h, ref.shape[0]:].any()  # the padding row of a side of D
                    f = theta0_rows[(c, side)]
                    proj = np.linalg.pinv(f) @ f  # onto f's row space
                    row = rows[(l, h, c, side)]
                    assert row["dim"] == ref.shape[0] == (D + 1 if (c, side) in (("qk", "left"), ("ov", "right"))
                                                          else D)
                    assert row["span_dim"] == d
                    energy = ((proj @ got) ** 2).sum(0)
                    assert np.allclose(row["span_energy"][:k], energy, atol=1e-5), (arch, l, h, c, side)
    return res


def test_product_svals_equal_the_svd_of_the_product():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 40, generator=g, dtype=torch.float64), torch.randn(6, 33, generator=g, dtype=torch.float64)
    s = product_svals(x, y)
    assert torch.allclose(s, torch.linalg.svdvals(x.T @ y)[:6], rtol=1e-10)


def _invertible(d, g):
    q1 = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    return q1 @ torch.diag(torch.exp(0.7 * torch.randn(d, generator=g, dtype=torch.float64))) @ q2


def _commuting_with_rotary(d, g):
    """An invertible d x d map that commutes with every rotary rotation (transformers' rotate_half
    pairs coordinate i with i + d/2): a scaled rotation in each of those planes."""
    half = d // 2
    r = torch.exp(0.7 * torch.randn(half, generator=g, dtype=torch.float64))
    phi = 3.0 * torch.randn(half, generator=g, dtype=torch.float64)
    a, b = r * torch.cos(phi), r * torch.sin(phi)
    m = torch.zeros(d, d, dtype=torch.float64)
    i = torch.arange(half)
    m[i, i], m[i, i + half], m[i + half, i], m[i + half, i + half] = a, -b, b, a
    return m


@torch.no_grad()
def reparametrised(model, seed=0):
    """A copy of `model` with each head's queries mapped by Mᵀ and keys by M⁻¹ (scores q·k kept), its
    values by N and O's columns by N⁻¹ (output kept); DeBERTa's separate position projections too.
    Decoders: M commutes with the rotary rotations (else q·R k changes); under grouped-query attention
    one M and N per K/V group, shared by the group's query heads."""
    model = copy.deepcopy(model).double()
    ad = get_adapter(model)
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    d, G = ad.head_dim(cfg), ad.group_size(cfg)

    def apply(mod, s, t):  # mod: (weight [out, in], bias) views, or a module
        if mod is None:
            return
        w, b = mod if isinstance(mod, tuple) else (mod.weight, mod.bias)
        w[s] = t @ w[s]
        if b is not None:
            b[s] = t @ b[s]
    for l in range(ad.num_layers(cfg)):
        lin = {k: (ad.weight(model, l, k), ad.bias(model, l, k)) for k in "qkvo"}  # GPT-2: Conv1D thirds
        layer = ad.layer_modules(model)[l]
        pos = {k: getattr(layer.attention.self, f"pos_{k}_proj", None) if hasattr(layer, "attention")
               and hasattr(layer.attention, "self") else None for k in ("query", "key")}
        for kv in range(ad.num_kv_heads(cfg)):
            rotary = ad.reads_last and cfg.model_type != "gpt2"  # GPT-2's positions are added, not rotated
            m = _commuting_with_rotary(d, g) if rotary else _invertible(d, g)
            n = _invertible(d, g)
            for h in range(kv * G, (kv + 1) * G):
                s = ad.head_slice(cfg, h)
                apply(lin["q"], s, m.T), apply(pos["query"], s, m.T), apply(pos["key"], s, torch.linalg.inv(m))
                lin["o"][0][:, s] = lin["o"][0][:, s] @ torch.linalg.inv(n)
            s = ad.head_slice(cfg, kv)
            apply(lin["k"], s, torch.linalg.inv(m)), apply(lin["v"], s, n)
    return model


def _logits(model):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 60, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return model.double()(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ARCH_TIERS)
def test_reparametrising_heads_changes_u_not_the_model_nor_the_circuits(arch):
    m0 = _base(arch)
    m1 = _near(m0)
    m1r = reparametrised(m1)
    assert torch.allclose(_logits(copy.deepcopy(m1)), _logits(copy.deepcopy(m1r)), rtol=1e-9, atol=1e-10)
    a, b = circuit_result(m0, m1), circuit_result(m0, m1r.float())
    for col in ("qk_rel", "ov_rel", "qk_srank", "ov_srank"):
        assert np.allclose(getattr(a, col), getattr(b, col), rtol=1e-5), col  # m1r rounded to fp32
    ad = get_adapter(m0)
    w0 = qkvo_weights(m0, ad)
    u, ur = (update_magnitude(w0, qkvo_weights(m, ad), ad, m0.config) for m in (m1, m1r.float()))
    assert (np.abs(ur.U - u.U) > 0.1 * u.U).all()  # U sees a large update where the function did not move
    for k in "qkvo":
        assert (np.abs(getattr(ur, f"U_{k}") - getattr(u, f"U_{k}")) > 0.01 * getattr(u, f"U_{k}")).all()


def test_an_unchanged_circuit_is_zero_and_a_lora_update_has_its_rank():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("bert", init=0.2)
    m0 = copy.deepcopy(model)
    ad = get_adapter(model)
    names = [ad.module_name(l, "q") for l in range(2)] + [ad.module_name(1, "v")]
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=names, init_lora_weights=False))
    res = circuit_result(m0, pm.merge_and_unload())
    assert (res.qk_rel > 0).all() and (res.qk_srank <= 2 + 1e-9).all() and (res.qk_srank >= 1 - 1e-9).all()
    assert (res.ov_rel[0] == 0).all() and np.isnan(res.ov_srank[0]).all()  # layer 0: V and O as they were
    assert (res.ov_rel[1] > 0).all() and (res.ov_srank[1] <= 2 + 1e-9).all()
    rows = {(r["layer"], r["module"]): r for r in res.amplification}
    assert rows[(0, "q")]["r"] == 2 and rows[(1, "v")]["r"] == 2 and rows[(0, "k")]["r"] == 0
    assert rows[(0, "k")]["amplification"] is None and rows[(0, "k")]["dw_fro"] == 0


def _amp_reference(a0, a1, r, seed, draws):
    dw = a1 - a0
    u, s, vh = np.linalg.svd(dw)
    rr = min(r, int((s > max(dw.shape) * np.finfo(np.float32).eps * s[0]).sum()))
    proj = np.linalg.norm(u[:, :rr].T @ a0 @ vh[:rr].T)
    rng = np.random.default_rng(seed)
    rand = []
    for _ in range(draws):
        ru = np.linalg.qr(rng.standard_normal((a0.shape[0], rr)))[0]
        rv = np.linalg.qr(rng.standard_normal((a0.shape[1], rr)))[0]
        rand.append(np.linalg.norm(ru.T @ a0 @ rv))
    return rr, np.linalg.norm(dw) / proj, np.linalg.norm(dw) / np.mean(rand)


@pytest.mark.parametrize("arch,r", [("bert", 8), ("deberta-v2:shared", 3), ("distilbert", 40), ("gpt2", 8),
                                    ("llama", 8)])
def test_amplification_equals_numpy(arch, r):
    m0 = _base(arch)
    m1 = _near(m0, scale=0.05)
    ad = get_adapter(m0)
    w0, w1 = qkvo_weights(m0, ad), qkvo_weights(m1, ad)
    rows = amplification_rows(w0, w1, ad, r)
    assert len(rows) == 4 * ad.num_layers(m0.config)
    for row in rows:
        key = (row["layer"], row["module"])
        rr, amp, amp_rand = _amp_reference(w0[key].double().numpy(), w1[key].double().numpy(), r,
                                           [0, key[0], "qkvo".index(key[1])], AMP_DRAWS)
        assert row["r"] == rr and rr <= min(r, *w0[key].shape) and rr >= min(r, 30) and row["r_setting"] == r
        assert row["amplification"] == pytest.approx(amp, rel=1e-9)
        assert row["amplification_random"] == pytest.approx(amp_rand, rel=1e-9)
        sv = np.linalg.svd(w1[key].double().numpy() - w0[key].double().numpy(), compute_uv=False)
        dw_shape = w0[key].shape
        rank = int((sv > max(dw_shape) * np.finfo(np.float32).eps * sv[0]).sum())
        assert list(row["by_r"]) == [str(q) for q in (1, 2, 4, 8, 16, 32, 64) if q <= rank]
        for q, at in row["by_r"].items():  # the same at every r of AMP_RS, for comparisons at a LoRA's rank
            _, amp_q, rand_q = _amp_reference(w0[key].double().numpy(), w1[key].double().numpy(), int(q),
                                              [0, key[0], "qkvo".index(key[1])], AMP_DRAWS)
            assert at["amplification"] == pytest.approx(amp_q, rel=1e-9)
            assert at["amplification_random"] == pytest.approx(rand_q, rel=1e-9)


def test_a_planted_update_along_w0s_weak_directions_is_amplified():
    """ΔW along W0's weakest singular directions: ||UᵀW0V|| is W0's smallest singular values, the
    amplification large; along its strongest: small (Hu et al.'s two regimes)."""
    g = torch.Generator().manual_seed(0)
    u0 = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))[0]
    v0 = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))[0]
    s0 = torch.linspace(3, 0.01, 32, dtype=torch.float64)
    w0 = (u0 * s0) @ v0.T
    ad = get_adapter("bert")
    for idx in (slice(-2, None), slice(0, 2)):
        dw = u0[:, idx] @ v0[:, idx].T  # ||ΔW||_F = sqrt(2)
        row = amplification_rows({(0, "q"): w0}, {(0, "q"): w0 + dw}, ad, 2)[0]
        assert row["proj_fro"] == pytest.approx(float(torch.linalg.norm(s0[idx])), rel=1e-9)
    weak = amplification_rows({(0, "q"): w0}, {(0, "q"): w0 + u0[:, -2:] @ v0[:, -2:].T}, ad, 2)[0]
    strong = amplification_rows({(0, "q"): w0}, {(0, "q"): w0 + u0[:, :2] @ v0[:, :2].T}, ad, 2)[0]
    assert weak["amplification"] > 3 * weak["amplification_random"] > 3 * strong["amplification"]


def test_the_comparison_summarises_the_amplification(tmp_path):
    """update_shape's per-run medians (over adapted matrices only) and the line in compare_summary.txt."""
    import json

    from headplast.cli.main import main
    from headplast.steps.compare_step import amplification_summary
    from synthetic import make_run

    rows = [{"layer": 0, "module": "q", "r_setting": 8, "r": 4, "amplification": 2.0, "amplification_random": 30.0},
            {"layer": 0, "module": "v", "r_setting": 8, "r": 4, "amplification": 6.0, "amplification_random": 50.0},
            {"layer": 0, "module": "o", "r_setting": 8, "r": 0, "amplification": None, "amplification_random": None}]
    s = amplification_summary(rows)
    assert s["median"] == 4.0 and s["median_random"] == 40.0 and s["matrices"] == 2 and s["r"] == [4]
    assert s["per_module"] == {"q": 2.0, "v": 6.0}
    for label in ("FFT", "LoRA_r8"):
        make_run(tmp_path, label, 1)
    assert main(["compare", "--seed", "1", "--lora-r", "8", "--output-root", str(tmp_path), "--n-boot", "100",
                 "--n-perm", "20", "--n-boot-examples", "20"]) == 0
    d = tmp_path / "COMPARE" / "RTE" / "seed1"
    m = json.loads((d / "compare_metrics.json").read_text())
    amp = m["update_shape"]["LoRA_r8"]["amplification"]
    assert amp["matrices"] == 16 and amp["median_random"] == 40.0
    # both runs at the compared LoRA rank (by_r["8"]), not at each run's own r
    assert amp["r"] == [8] and amp["compared_rank"] == 8 and m["update_shape"]["FFT"]["amplification"]["r"] == [8]
    rows8 = [json.loads(x) for x in (tmp_path / "LoRA" / "RTE" / "seed1_r8" / "amplification.jsonl").read_text().splitlines()]
    assert amp["median"] == pytest.approx(float(np.median([r["by_r"]["8"]["amplification"] for r in rows8])))
    r4 = amplification_summary(rows8, 4)
    assert r4["r"] == [4] and r4["median"] == pytest.approx(amp["median"] / 2)
    assert amplification_summary(rows8, 12)["r"] == [8]  # the largest power of two below a rank of 12
    # only over the matrices both runs adapted (a LoRA on Q and V: FFT's K and O left out)
    qv = {(r["layer"], r["module"]) for r in rows8 if r["module"] in "qv"}
    only = amplification_summary(rows8, 8, qv)
    assert only["matrices"] == len(qv) and set(only["per_module"]) == {"q", "v"}
    old_rows = [{k: v for k, v in r.items() if k != "by_r"} for r in rows8]  # measured before by_r: own r
    assert amplification_summary(old_rows, 4)["compared_rank"] is None
    summary = (d / "compare_summary.txt").read_text()
    line = next(x for x in summary.splitlines() if "amplification" in x)
    assert f"LoRA_r8 {amp['median']:.2f} (random directions 40.00)" in line and "FFT " in line
    assert "ρ(I_pre, qk_rel)" in summary and "ρ(I_post, ov_rel)" in summary


@pytest.mark.slow
def test_the_measure_step_writes_the_circuits_and_amplification_of_a_lora_run(model_dirs, tmp_path):
    """A trained LoRA r=4 run: circuit_update.jsonl per head, amplification.jsonl per matrix with r = 4
    (the update's rank, below --amplification-r 8); --amplification-r redoes this measurement only."""
    import json

    from headplast.measure.config import MeasureConfig
    from headplast.steps.measure_step import run_measure
    from headplast.steps.train_step import run_train
    from headplast.store.io import read_jsonl
    from headplast.train.config import TrainConfig
    from tiny import tiny_run_kwargs

    kw = tiny_run_kwargs(model_dirs["bert"], tmp_path)
    lora = run_train(TrainConfig(method="lora", lora_r=4, lora_alpha=8, **kw)).path
    run_measure(lora, MeasureConfig(progress=False))
    rows = read_jsonl(lora / "circuit_update.jsonl", 8)
    assert all(r["qk_rel"] > 0 and r["qk_srank"] <= 8 + 1e-6 for r in rows)  # ΔQK = ΔAᵀB1 + A0ᵀΔB: rank <= 2r
    bases = np.load(lora / "circuit_bases.npy")  # [4 sides, L, H, D+1, 16]: at most 2r = 8 directions per side
    kept = (np.abs(bases).sum(-2) > 0).sum(-1)
    assert bases.shape[:3] == (4, 2, 4) and bases.dtype == np.float32 and (kept >= 1).all() and (kept <= 8).all()
    assert len(read_jsonl(lora / "circuit_subspaces.jsonl", 4 * 8)) == 32
    amp = [json.loads(line) for line in (lora / "amplification.jsonl").read_text().splitlines()]
    adapted = [r for r in amp if r["amplification"] is not None]
    assert [(r["layer"], r["module"]) for r in amp] == [(l, k) for l in range(2) for k in "qkvo"]
    assert adapted and all(r["r"] == 4 and r["r_setting"] == 8 for r in adapted)
    t = run_measure(lora, MeasureConfig(progress=False, amplification_r=2)).timings
    assert isinstance(t["circuit_update"], float) and {v for k, v in t.items() if k != "circuit_update"} == {"skipped"}
    amp = [json.loads(line) for line in (lora / "amplification.jsonl").read_text().splitlines()]
    assert all(r["r"] == 2 for r in amp if r["amplification"] is not None)


def test_the_comparison_overlaps_the_circuit_subspaces_against_chance_and_seeds(tmp_path):
    """compare_metrics.json's circuit_subspace per side: φ and its null recomputed here by hand from
    the runs' files, a noise floor from seed 2, the summary's lines and the answer's line; a run
    without circuit updates gives none (and no line)."""
    import json

    from headplast.cli.main import main
    from headplast.report.headline import answer_lines
    from headplast.steps.runs import read_compare
    from synthetic import make_run

    runs = {(lab, s): make_run(tmp_path, lab, s) for lab in ("FFT", "LoRA_r8") for s in (1, 2)}
    assert main(["compare", "--seed", "1", "--output-root", str(tmp_path), "--n-boot", "100", "--n-perm", "20",
                 "--n-boot-examples", "20", "--subspace-k", "4"]) == 0
    d = tmp_path / "COMPARE" / "RTE" / "seed1"
    cs = json.loads((d / "compare_metrics.json").read_text())["circuit_subspace"]
    assert list(cs) == ["qk_left", "qk_right", "ov_left", "ov_right"]
    a, b = (np.load(runs[(lab, 1)] / "circuit_bases.npy").astype(np.float64) for lab in ("FFT", "LoRA_r8"))
    rows = {lab: [json.loads(x) for x in (runs[(lab, 1)] / "circuit_subspaces.jsonl").read_text().splitlines()]
            for lab in ("FFT", "LoRA_r8")}
    for i, side in enumerate(cs):
        dim = cs[side]["dim"]
        phi, null = [], []
        for ra, rb in zip(*(sorted((r for r in rows[lab] if f"{r['circuit']}_{r['side']}" == side),
                                   key=lambda r: (r["layer"], r["head"])) for lab in ("FFT", "LoRA_r8"))):
            ua, ub = a[i, ra["layer"], ra["head"], :dim, :4], b[i, rb["layer"], rb["head"], :dim, :4]
            phi.append(np.linalg.norm(ua.T @ ub) ** 2 / 4)
            ea, eb = sum(ra["span_energy"][:4]), sum(rb["span_energy"][:4])
            null.append((ea * eb / 4 + (4 - ea) * (4 - eb) / (dim - 4)) / 4)
        assert cs[side]["phi"]["mean"] == pytest.approx(np.mean(phi))
        assert cs[side]["random_within_parts"]["mean"] == pytest.approx(np.mean(null))
        assert set(cs[side]["noise_floor"]) == {"FFT", "LoRA_r8"}
    summary = (d / "compare_summary.txt").read_text()
    assert "on the circuit updates" in summary and "ΔOV input side (θ0 span 4 of 25)" in summary
    line = [x for x in answer_lines(read_compare(d / "compare_metrics.json")) if x.startswith("circuit updates")]
    assert len(line) == 1 and "ΔQK query side" in line[0]
    lone = tmp_path / "lone"
    make_run(lone, "FFT", 1), make_run(lone, "LoRA_r8", 1, without=("circuit_update",))
    assert main(["compare", "--seed", "1", "--output-root", str(lone), "--n-boot", "100", "--n-perm", "20",
                 "--n-boot-examples", "20"]) == 0
    m = read_compare(lone / "COMPARE" / "RTE" / "seed1" / "compare_metrics.json")
    assert m["circuit_subspace"] == {} and not any(x.startswith("circuit updates") for x in answer_lines(m))
