"""Subspace overlap phi: its chance level keeping each part's energy (issue 29 item 7) and the rank
of a rank-deficient update (item 8), against direct computations."""

import numpy as np
import pytest
import torch

from headplast.analysis.subspace import overlap, random_within_parts
from headplast.measure.geometry import BASES_K, top_basis


def _bases(ms: list[np.ndarray], k: int = BASES_K) -> np.ndarray:
    """[1, n, rows, k] bases of the matrices, as measure.geometry stores them."""
    return np.stack([top_basis(torch.from_numpy(m), k)[0] for m in ms])[None]


def _random_within_parts(rng, d, D, shares):
    """A head's update [4d, D]: Gaussian in each part, part p holding shares[p] of the energy."""
    return np.vstack([np.sqrt(s / (d * D)) * rng.normal(size=(d, D)) for s in shares])


@pytest.mark.parametrize("shares_a,shares_b", [((0.85, 0.05, 0.05, 0.05), (0.85, 0.05, 0.05, 0.05)),
                                               ((0.05, 0.05, 0.7, 0.2), (0.1, 0.1, 0.6, 0.2))])
def test_the_null_keeping_each_parts_energy_is_the_mean_phi_of_updates_random_within_parts(shares_a, shares_b):
    rng = np.random.default_rng(0)
    d, D, k, n = 8, 40, 4, 300
    a = _bases([_random_within_parts(rng, d, D, shares_a) for _ in range(n)])
    b = _bases([_random_within_parts(rng, d, D, shares_b) for _ in range(n)])
    phi, null = overlap(a, b, k), random_within_parts(a, b, k)
    se = phi.std() / np.sqrt(n)
    assert abs(phi.mean() - null.mean()) < 4 * se  # the null's mean is the simulated mean phi
    assert abs(phi.mean() - k / (4 * d)) > 10 * se  # k / 4d is not
    assert phi.mean() > 1.5 * k / (4 * d)


def test_the_null_is_k_over_4d_for_random_subspaces_and_k_over_d_within_one_part():
    d, k = 8, 4
    u = np.zeros((1, 2, 4 * d, k))
    u[0, :, :k, :k] = np.eye(k)  # both subspaces in Q
    assert random_within_parts(u, u, k)[0] == pytest.approx([k / d, k / d])
    v = np.linalg.qr(np.random.default_rng(1).normal(size=(4 * d, k)))[0]
    w = np.zeros((1, 1, 4 * d, k))
    w[0, 0] = v
    e = (v.reshape(4, d, k) ** 2).sum((1, 2))
    assert random_within_parts(w, w, k)[0, 0] == pytest.approx((e ** 2).sum() / (d * k))


def test_phi_of_a_rank_4_update_is_one_against_itself_and_direct_against_another():
    rng = np.random.default_rng(2)
    rows, D, k = 32, 48, 8
    m = rng.normal(size=(rows, 4)) @ rng.normal(size=(4, D))
    other = rng.normal(size=(rows, 4)) @ rng.normal(size=(4, D))
    a, b = _bases([m]), _bases([other])
    assert (np.abs(a[0, 0]).sum(0) > 0).sum() == 4  # vectors 5.. span numerical noise: not kept
    again = _bases([m + 1e-13 * rng.normal(size=m.shape)])  # the same update, other rounding noise
    assert overlap(a, again, k)[0, 0] == pytest.approx(1.0)  # was ~0.5: 4 shared + 4 random noise vectors, / 8
    ua, ub = np.linalg.svd(m)[0][:, :4], np.linalg.svd(other)[0][:, :4]  # column spaces, computed directly
    assert overlap(a, b, k)[0, 0] == pytest.approx(np.linalg.norm(ua.T @ ub) ** 2 / 4)
    f = rng.normal(size=(rows, D))  # against a full-rank update: normalised by min(k, 4, 8) = 4
    full, uf = _bases([f]), np.linalg.svd(f)[0][:, :k]
    assert overlap(a, full, k)[0, 0] == pytest.approx(np.linalg.norm(ua.T @ uf) ** 2 / 4)
    assert np.isnan(overlap(a, np.zeros_like(a), k)[0, 0])


def _in_span(rng, m, s, c, share):
    """An update [m, c] whose columns hold `share` of their energy in S = the first s coordinates
    of a fixed rotation, random within S and within its complement."""
    return np.vstack([np.sqrt(share / s) * rng.normal(size=(s, c)), np.sqrt((1 - share) / (m - s)) * rng.normal(size=(m - s, c))])


@pytest.mark.parametrize("share_a,share_b", [(0.9, 0.9), (0.6, 0.95)])
def test_the_circuit_null_keeping_the_energy_in_theta0s_span_is_the_mean_phi_of_random_updates(share_a, share_b):
    """analysis.subspace.circuit_null against a simulation: the top-k subspaces of updates that are
    random within S (dim s, the head's θ0 span) and within its complement overlap by circuit_null on
    average, far above random subspaces of the whole side (k / m)."""
    from headplast.analysis.subspace import circuit_null

    rng = np.random.default_rng(3)
    m, s, c, k, n = 41, 8, 30, 4, 300
    rot = np.linalg.qr(rng.normal(size=(m, m)))[0]  # S = the span of rot's first s columns
    a = _bases([rot @ _in_span(rng, m, s, c, share_a) for _ in range(n)])
    b = _bases([rot @ _in_span(rng, m, s, c, share_b) for _ in range(n)])
    energy = lambda u: ((rot[:, :s].T @ u) ** 2).sum(-2)  # noqa: E731  [1, n, K]: each vector's energy in S
    null = circuit_null(a, b, energy(a), energy(b), np.full((1, n), s), m, k)
    phi = overlap(a, b, k)
    se = phi.std() / np.sqrt(n)
    assert abs(phi.mean() - null.mean()) < 4 * se
    assert phi.mean() > 2 * k / m and abs(phi.mean() - k / m) > 10 * se
    both_in_s = np.zeros((1, 1, m, k))
    both_in_s[0, 0, :k, :k] = np.eye(k)
    assert circuit_null(both_in_s, both_in_s, np.ones((1, 1, k)), np.ones((1, 1, k)), np.full((1, 1), s), m,
                        k)[0, 0] == pytest.approx(k / s)  # both wholly inside S: chance is k / s
    none = np.zeros((1, 1, k))  # both wholly outside S: k / (m - s), not k / m
    assert circuit_null(both_in_s, both_in_s, none, none, np.full((1, 1), s), m, k)[0, 0] == pytest.approx(k / (m - s))
    half = np.full((1, 1, k), 0.5)  # half of each vector's energy in S: (k²/4 / s + k²/4 / (m - s)) / k
    assert circuit_null(both_in_s, both_in_s, half, half, np.full((1, 1), s), m, k)[0, 0] == pytest.approx(
        (k * k / 4 / s + k * k / 4 / (m - s)) / k)
