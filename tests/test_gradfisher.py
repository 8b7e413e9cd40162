import numpy as np
import pytest
import torch

from headplast.arch import get_adapter
from headplast.data.tokenize import collate
from headplast.measure.ablation import example_losses
from headplast.measure.gating import head_gates
from headplast.measure.gradfisher import grad_fisher
from tiers import slow_except
from tiny import ALL_ARCHS, head_sq, tiny_model

N = 6


def _one(enc, i):
    b = collate([enc.features[i]], 0, enc.labels[[i]])
    return b, b.pop("labels")


@pytest.mark.parametrize("arch", slow_except(ALL_ARCHS, "bert", "deberta-v2:shared"))
def test_gate_gradients_equal_finite_differences_and_fisher_equals_loop(arch, enc_small, tok, rte):
    task, _ = rte
    enc = type(enc_small)(enc_small.features[:N], enc_small.labels[:N])
    model = tiny_model(arch, init=0.3).double()
    ad = get_adapter(model)
    res = grad_fisher(model, ad, enc, task, tok.pad_token_id, batch_size=4, progress=False)
    L, H = 2, 4
    # measuring leaves the model as it was: no gradients, original requires_grad
    assert all(p.grad is None and p.requires_grad for p in model.parameters())

    # central finite differences of each example's loss w.r.t. each gate
    fd = np.zeros((N, L, H))
    # decoders' RMSNorm and rotary embeddings compute in fp32 even in a float64 model: a larger step,
    # and a tolerance for fp32 rounding of the loss divided by 2 eps (autograd itself is checked below)
    eps, rtol = (1e-3, 2e-3) if ad.reads_last else (1e-5, 1e-5)
    for i in range(N):
        b, y = _one(enc, i)
        for l in range(L):
            for h in range(H):
                vals = []
                for g in (1 + eps, 1 - eps):
                    gates = torch.ones(L, H, dtype=torch.float64)
                    gates[l, h] = g
                    with torch.no_grad(), head_gates(model, ad, gates):
                        vals.append(example_losses(model(**b).logits, y, False).item())
                fd[i, l, h] = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(res.gate_grad, np.abs(fd).mean(0), rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(res.gate_fisher, (fd ** 2).mean(0), rtol=2 * rtol, atol=1e-12)
    np.testing.assert_allclose(res.taylor, -fd.mean(0), rtol=rtol, atol=1e-9 if rtol < 1e-4 else 1e-5)

    # explicit loop over examples: per-example parameter gradients
    fisher = np.zeros((L, H))
    total = {}
    for i in range(N):
        b, y = _one(enc, i)
        model.zero_grad()
        example_losses(model(**b).logits, y, False).sum().backward()
        for l in range(L):
            for k in "qkvo":
                g = ad.linear(model, l, k).weight.grad
                total[(l, k)] = total.get((l, k), 0) + g / N
                for h in range(H):
                    fisher[l, h] += head_sq(g, model.config, k, h) / N
    grad_norm = np.array([[np.sqrt(sum(head_sq(total[(l, k)], model.config, k, h) for k in "qkvo"))
                           for h in range(H)] for l in range(L)])
    assert fisher.max() > 0
    np.testing.assert_allclose(res.fisher, fisher, rtol=1e-7)
    np.testing.assert_allclose(res.grad_norm, grad_norm, rtol=1e-7)


@pytest.mark.parametrize("arch", ["deberta-v2:shared", "deberta-v2:conv"])
@pytest.mark.parametrize("dtype,rtol", [pytest.param(torch.float64, 1e-10, marks=pytest.mark.slow), (torch.float32, 2e-5)])
def test_deberta_shared_projections_batched_equal_batches_of_one(arch, dtype, rtol, enc_small, tok, rte):
    """Q/K applied to the relative positions (an input shared by the batch): batches of 4 through
    torch.func give what batches of one through the hooks gave (the method before batching)."""
    from dataclasses import replace

    task, _ = rte
    model = tiny_model(arch, init=0.3).to(dtype)
    ad = get_adapter(model)
    assert ad.reuses_projections(model.config)
    batched = grad_fisher(model, ad, enc_small, task, tok.pad_token_id, batch_size=4, progress=False)
    hooks = replace(ad, reuses_projections_fn=None)  # the hooks' path, exact with one example per batch
    ones = grad_fisher(model, hooks, enc_small, task, tok.pad_token_id, batch_size=1, progress=False)
    for f in ("grad_norm", "fisher", "gate_grad", "gate_fisher", "taylor"):
        a, b = getattr(batched, f), getattr(ones, f)
        assert np.abs(b).max() > 0
        tol = max(rtol, 1e-6) if f == "grad_norm" else rtol  # the mean gradient is summed in fp32, by design
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(), err_msg=f)
    with pytest.raises(RuntimeError, match="shared by the batch"):  # the hooks alone cannot batch it
        grad_fisher(model, hooks, enc_small, task, tok.pad_token_id, batch_size=4, progress=False)
