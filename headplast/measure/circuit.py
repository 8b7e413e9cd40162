"""Circuit updates per head (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits") and the amplification factor per matrix (Hu et al. 2021, LoRA §7.3).

Per head h of layer l (`circuit_update.jsonl`), with the head's rows W_Q^h, W_K^h, W_V^h [d, D] of
torch's [out, in] weights, its columns W_O^h [D, d] of O, and x a token's input to the attention
(the residual stream in residual-stream coordinates, after the LayerNorm of post-LN families):

  QK = [W_Q^h, b_Q^h]ᵀ W_K^h   [(D+1), D]: the score of query x_i for key x_j is [x_i; 1]ᵀ QK x_j
                               plus terms that are the same for every key of a query (the key bias:
                               q_iᵀ b_K^h), which the softmax ignores and this map leaves out;
  OV = W_O^h [W_V^h, b_V^h]    [D, (D+1)]: the head adds Σ_j a_ij OV [x_j; 1] to the residual
                               stream (the attention weights sum to 1, so the value bias is a
                               constant output W_O^h b_V^h, the last column); O's own bias is
                               shared by every head and left out.

Elhage et al. write these as W_Q^h W_K^hᵀ and W_O^h W_V^h on row vectors; the scale 1/sqrt(d)
(DeBERTa's 1/sqrt(d · scale_factor)) is a constant and left out (it cancels in both columns).
DeBERTa's relative-position terms (content-to-position q_i · k_pos(δ), position-to-content
k_j · q_pos(δ); in DeBERTa the key bias meets the position queries there) are not part of QK, nor
MPNet's relative position bias: QK is the content-to-content circuit only. Decoders with rotary
embeddings score q_iᵀ R(j−i) k_j: QK is that map at relative distance 0. Under grouped-query
attention head h's K/V are its group's (adapter.head_weight): QK and OV are the maps h applies.

ΔQK = QK(θ1) − QK(θ0), ΔOV likewise; qk_rel = ||ΔQK||_F / ||QK(θ0)||_F, ov_rel likewise, and
the stable ranks ||Δ||_F² / ||Δ||_2² (NaN where the map did not change). Any invertible d×d map M
of a head's queries and keys (W_Q^h → Mᵀ W_Q^h, W_K^h → M⁻¹ W_K^h, biases alike) or of its values
and output (W_V^h → M W_V^h, b_V^h → M b_V^h, W_O^h → W_O^h M⁻¹) changes U and leaves the model,
QK, OV and so these columns as they were.

No [D, D] map is formed: ΔQK = ΔAᵀ B1 + A0ᵀ ΔB with A = [W_Q^h, b_Q^h], B = W_K^h is XᵀY with
X = [ΔA; A0], Y = [B1; ΔB] of 2d rows; with Xᵀ = Q1 R1 and Yᵀ = Q2 R2 (QR), XᵀY = Q1 (R1 R2ᵀ) Q2ᵀ,
so its singular values are those of the 2d × 2d core R1 R2ᵀ (`product_svals`, `update_bases`). All in float64
from the fp32 checkpoints.

Subspaces of the circuit updates (`circuit_bases.npy`, `circuit_subspaces.jsonl`), for the FFT vs
LoRA overlap of `headplast compare`: per head and side of ΔQK and ΔOV (SIDES: the query side
[x_i; 1] and the key side x_j of ΔQK, the output side (residual stream written) and the input side
[x_j; 1] of ΔOV), the top BASES_K singular vectors of the map on that side, only those above
geometry.rank_tolerance (zero columns beyond; from the same QR core: left = Q1 U_core, right =
Q2 V_core), as float32 [4 sides, L, H, D+1, BASES_K] (the sides of D coordinates padded with a zero
last row). Each row of the jsonl gives, for one head and side, the energy of each kept vector
inside S, the row space of θ0's own factor on that side (the head's θ0 query map [W_Q^h, b_Q^h],
its key map W_K^h, its output columns W_O^h, its value map [W_V^h, b_V^h]: the d directions the
head reads or writes at θ0), and dim S. Both methods' updates put much of their energy in S
(ΔQK = ΔAᵀ B1 + A0ᵀ ΔB: the second term's query side lies in S), so two unrelated updates overlap
there more than random subspaces of the whole space would: the null of the overlap keeps each
subspace's energy in S and in its complement and randomises its directions within each
(analysis.subspace.circuit_null, as for φ of the weights). The sides of D + 1 coordinates carry
the bias column as one more coordinate on the scale of the weights: a choice (x's own scale after
a LayerNorm is about sqrt(D) per token) that moves their singular vectors little where the biases
are small; where the biases are zero and stay so, that coordinate is 0 in both runs.

Per weight matrix (`amplification.jsonl`), Hu et al. 2021 §7.3: with U, V the top-r left and right
singular vectors of ΔW = W1 − W0, the amplification factor ||ΔW||_F / ||Uᵀ W0 V||_F (how much the
update amplifies directions W0 does not emphasise), against the same with U, V random orthonormal
(||ΔW||_F over the mean of ||Uᵀ W0 V||_F over AMP_DRAWS draws, seeded per matrix). r is
--amplification-r (8), or the update's rank where that is smaller (a rank-4 LoRA: 4; the rank
counts singular values above geometry.rank_tolerance); each row records the r used. `by_r` gives
the same at every r of AMP_RS up to the update's rank, so that a full fine-tuning is compared
with a rank-r LoRA at that LoRA's r (Hu et al. compare at r = 4 and 64). A matrix fine-tuning
left as it was has r 0 and no amplification (null).
"""

from __future__ import annotations

import numpy as np
import torch

from headplast.arch.adapters import KINDS, ArchAdapter, get_adapter
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.geometry import BASES_K, kept_rank, spectrum_stats
from headplast.measure.results import CircuitResult
from headplast.measure.update import qkvo_weights
from headplast.store import schema

AMP_DRAWS = 8  # random orthonormal pairs (U, V) per matrix
AMP_SEED = 0
AMP_RS = (1, 2, 4, 8, 16, 32, 64)  # the r of `by_r`: the LoRA ranks a full fine-tuning is compared at
SIDES = schema.CIRCUIT_SIDES  # (circuit, side of the map): ("qk", "left") is ΔQK's query side, ...


def qkvo_biases(model, adapter: ArchAdapter) -> dict:
    """{(layer, kind): fp32 bias} of Q, K, V, O (zeros where a Linear has none)."""
    out = {}
    for l in range(adapter.num_layers(model.config)):
        for k in KINDS:
            b = adapter.bias(model, l, k)
            b = b if b is not None else torch.zeros(adapter.weight(model, l, k).shape[0])
            out[(l, k)] = b.detach().float().cpu().clone()
    return out


def product_svals(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Singular values of xᵀ y (x [k, m], y [k, n]) from its k × k core: xᵀ = Q1 R1, yᵀ = Q2 R2."""
    r1 = torch.linalg.qr(x.T, mode="r").R
    r2 = torch.linalg.qr(y.T, mode="r").R
    return torch.linalg.svdvals(r1 @ r2.T)


def _update_factors(a0, a1, b0, b1) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x, y) with xᵀ y = a1ᵀ b1 − a0ᵀ b0 = Δaᵀ b1 + a0ᵀ Δb, a block of zeros dropped; None where
    neither factor changed."""
    da, db = a1 - a0, b1 - b0
    xs, ys = [], []
    if da.any():
        xs.append(da), ys.append(b1)
    if db.any():
        xs.append(a0), ys.append(db)
    return (torch.cat(xs), torch.cat(ys)) if xs else None


def product_bases(x: torch.Tensor, y: torch.Tensor, n: int = BASES_K) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor]:
    """([m, n], [p, n], singular values): the top-n left and right singular vectors of xᵀ y (x [k, m],
    y [k, p]) from its k × k core (xᵀ = Q1 R1, yᵀ = Q2 R2, R1 R2ᵀ = U S Vᵀ: left Q1 U, right Q2 V),
    zero columns beyond its rank (s_i <= geometry.rank_tolerance × s_1), and its singular values S."""
    q1, r1 = torch.linalg.qr(x.T)
    q2, r2 = torch.linalg.qr(y.T)
    u, s, vh = torch.linalg.svd(r1 @ r2.T)
    r = min(n, kept_rank(s, (x.shape[1], y.shape[1])))
    left = torch.zeros(x.shape[1], n, dtype=x.dtype)
    right = torch.zeros(y.shape[1], n, dtype=y.dtype)
    left[:, :r], right[:, :r] = q1 @ u[:, :r], q2 @ vh[:r].T
    return left, right, s


def update_bases(a0, a1, b0, b1, n: int = BASES_K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """product_bases of a1ᵀ b1 − a0ᵀ b0; where neither factor changed: zero bases and the single
    singular value 0."""
    f = _update_factors(a0, a1, b0, b1)
    if f is None:
        return a0.new_zeros(a0.shape[1], n), b0.new_zeros(b0.shape[1], n), torch.zeros(1, dtype=a0.dtype)
    return product_bases(*f, n)


def span_basis(f: torch.Tensor) -> torch.Tensor:
    """[m, rank]: an orthonormal basis of the row space of f [k, m] (singular values above the tolerance)."""
    _, s, vh = torch.linalg.svd(f, full_matrices=False)
    return vh[:kept_rank(s, f.shape)].T


def head_factors(w: dict, b: dict, adapter: ArchAdapter, config, layer: int, head: int) -> dict:
    """The head's circuits as xᵀ y: {"qk": (A = [W_Q^h, b_Q^h], W_K^h), "ov": (W_O^hᵀ, [W_V^h, b_V^h])}."""
    hw = {k: adapter.head_weight(w[(layer, k)], config, k, head).double() for k in KINDS}
    hb = {k: adapter.head_bias(b[(layer, k)], config, k, head).double()[:, None] for k in ("q", "v")}
    return {"qk": (torch.cat([hw["q"], hb["q"]], 1), hw["k"]), "ov": (hw["o"].T, torch.cat([hw["v"], hb["v"]], 1))}


def circuit_updates(w0: dict, w1: dict, b0: dict, b1: dict, adapter: ArchAdapter, config,
                    n: int = BASES_K) -> tuple[dict, np.ndarray, list[dict]]:
    """({qk_rel, ov_rel, qk_srank, ov_srank}: [L, H] each; the bases [4 sides, L, H, D+1, n] float32;
    one row per head and side: the energy of each basis vector inside θ0's span on that side)."""
    L, H = adapter.num_layers(config), adapter.num_heads(config)
    out = {f"{c}_{s}": np.zeros((L, H)) for c in ("qk", "ov") for s in ("rel", "srank")}
    D1 = w0[(0, "q")].shape[1] + 1  # D + 1: the bias-augmented sides
    bases = np.zeros((len(SIDES), L, H, D1, n), dtype=np.float32)
    rows = []
    for l in range(L):
        for h in range(H):
            f0 = head_factors(w0, b0, adapter, config, l, h)
            f1 = head_factors(w1, b1, adapter, config, l, h)
            for c in ("qk", "ov"):
                (x0, y0), (x1, y1) = f0[c], f1[c]
                base = spectrum_stats(product_svals(x0, y0).numpy())["fro"]
                left, right, svals = update_bases(x0, x1, y0, y1, n)
                st = spectrum_stats(svals.numpy())
                out[f"{c}_rel"][l, h] = st["fro"] / base if base > 0 else np.nan
                out[f"{c}_srank"][l, h] = st["srank"]
                for side, basis, theta0_factor in zip(("left", "right"), (left, right), (x0, y0)):
                    i = SIDES.index((c, side))
                    bases[i, l, h, :basis.shape[0]] = basis.numpy()
                    span = span_basis(theta0_factor)
                    rows.append({"layer": l, "head": h, "circuit": c, "side": side, "dim": basis.shape[0],
                                 "span_dim": span.shape[1],
                                 "span_energy": [round(float(e), 9) for e in (span.T @ basis).pow(2).sum(0)]})
    return out, bases, rows


def amplification_rows(w0: dict, w1: dict, adapter: ArchAdapter, r: int, draws: int = AMP_DRAWS,
                       seed: int = AMP_SEED) -> list[dict]:
    rows = []
    for (l, kind) in sorted(w0, key=lambda x: (x[0], KINDS.index(x[1]))):
        a0 = w0[(l, kind)].double()
        dw = w1[(l, kind)].double() - a0
        row = {"layer": l, "module": kind, "name": adapter.module_name(l, kind), "r_setting": r,
               "dw_fro": float(dw.norm()), "w0_fro": float(a0.norm())}
        u, s, vh = torch.linalg.svd(dw, full_matrices=False)
        rank = kept_rank(s, dw.shape)
        rr = min(r, rank)
        row["r"] = rr
        if rr == 0:
            rows.append({**row, "proj_fro": None, "proj_random_fro": None, "amplification": None,
                         "amplification_random": None, "by_r": {}})
            continue
        at = lambda q: _amplification(a0, u, vh, row["dw_fro"], q, draws, [seed, l, KINDS.index(kind)])  # noqa: E731
        by_r = {str(q): at(q) for q in AMP_RS if q <= rank}
        rows.append({**row, **(by_r.get(str(rr)) or at(rr)), "by_r": by_r})  # the same draws: rr's entry when there
    return rows


def _amplification(a0, u, vh, dw_fro: float, r: int, draws: int, seed: list) -> dict:
    """The amplification on the top-r directions of ΔW (u, vh: its SVD) and on random ones."""
    proj = float((u[:, :r].T @ a0 @ vh[:r].T).norm())
    rng = np.random.default_rng(seed)
    rand = []
    for _ in range(draws):
        ru = torch.linalg.qr(torch.from_numpy(rng.standard_normal((a0.shape[0], r))))[0]
        rv = torch.linalg.qr(torch.from_numpy(rng.standard_normal((a0.shape[1], r))))[0]
        rand.append(float((ru.T @ a0 @ rv).norm()))
    proj_rand = float(np.mean(rand))
    return {"proj_fro": proj, "proj_random_fro": proj_rand, "amplification": dw_fro / proj if proj > 0 else None,
            "amplification_random": dw_fro / proj_rand if proj_rand > 0 else None}


def circuit_result(m0, m1, r: int = 8) -> CircuitResult:
    ad = get_adapter(m0)
    w0, w1 = qkvo_weights(m0, ad), qkvo_weights(m1, ad)
    cols, bases, sides = circuit_updates(w0, w1, qkvo_biases(m0, ad), qkvo_biases(m1, ad), ad, m0.config)
    return CircuitResult(**cols, amplification=amplification_rows(w0, w1, ad, r), bases=bases, subspaces=sides)


def _compute(x: Inputs) -> CircuitResult:
    return circuit_result(x.model("theta0", exact=True), x.model("theta1", exact=True), x.cfg.amplification_r)


CIRCUIT_UPDATE = Measurement.of(schema.CIRCUIT_UPDATE, CircuitResult, _compute)
