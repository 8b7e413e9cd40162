"""Synthetic run directories: measurement files with known structure, no model needed.

Files are written for every declared measurement (headplast.measure.registry), with step
records, exactly as the measure step lays them out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from headplast.measure import registry
from headplast.store import layout, records
from headplast.store.io import atomic_save_npy, atomic_write_jsonl


def _per_example(rng, true: np.ndarray, N: int, base: np.ndarray, scale: float) -> np.ndarray:
    per_ex = true * scale + 0.05 * rng.normal(size=(N, len(true)))
    return np.hstack([base, base + per_ex]).astype(np.float32)


def bases(rng, L: int, H: int, dim: int = 32, K: int = 16, shared: float = 0.6) -> np.ndarray:
    """[L, H, dim, K] orthonormal bases: a head's subspace is partly the same in every run (a
    fixed seed per head) and partly the run's own."""
    out = np.zeros((L, H, dim, K))
    for l in range(L):
        for h in range(H):
            common = np.random.default_rng(1000 + l * H + h).normal(size=(dim, K))
            out[l, h] = np.linalg.qr(shared * common + (1 - shared) * rng.normal(size=(dim, K)))[0]
    return out


def joint_losses(fwd_values: np.ndarray, L: int, H: int, interaction: float, rng) -> np.ndarray:
    """losses_joint_fwd.npy [N, L + 2] whose per-layer gain is the sum of the heads' gains in
    losses_effect_fwd.npy (NEGATED losses) plus `interaction` (noise of mean 0 per example); the
    model's gain is the sum over every head plus L * interaction."""
    N = len(fwd_values)
    base = -fwd_values[:, 0].astype(float)
    single = (fwd_values[:, 1:] - fwd_values[:, :1]).astype(float).reshape(N, L, H)
    noise = 0.01 * rng.normal(size=(N, L + 1))
    noise -= noise.mean(0)
    gains = np.hstack([single.sum(2) + interaction, single.sum((1, 2))[:, None] + L * interaction]) + noise
    return np.hstack([base[:, None], base[:, None] - gains])


def extra_file(name: str, rng, L: int, H: int, run_dir: Path | None = None, interaction: float = 0.0):
    if name == "update_bases.npy":
        return bases(rng, L, H)
    if name == "intruders.jsonl":
        return [{"layer": l, "module": k, "name": f"layer.{l}.{k}", "k": 10, "epsilon": 0.5,
                 "intruders": int(n), "max_cos": [0.3] * int(n) + [0.9] * (10 - int(n))}
                for l in range(L) for k in "qkvo" for n in [rng.integers(0, 4)]]
    if name == "amplification.jsonl":
        amp = np.random.default_rng(int(rng.integers(1 << 30))).lognormal(1.5, 0.5, size=(L, 4))
        at = lambda a, r: {"proj_fro": 8 / (a * r), "proj_random_fro": 1 / 40,  # noqa: E731  (a at r = 8)
                           "amplification": a * r / 8, "amplification_random": 40.0}
        return [{"layer": l, "module": k, "name": f"layer.{l}.{k}", "r_setting": 8, "r": 8, "dw_fro": 1.0,
                 "w0_fro": 20.0, **at(amp[l, i], 8), "by_r": {str(r): at(amp[l, i], r) for r in (1, 2, 4, 8, 16)}}
                for l in range(L) for i, k in enumerate("qkvo")]
    if name == "circuit_bases.npy":  # random orthonormal top-16 bases of each side, D = 24 (sides of D padded)
        g = np.random.default_rng(int(rng.integers(1 << 30)))
        out = np.zeros((4, L, H, 25, 16), dtype=np.float32)
        for i in range(4):
            dim = 25 if i in (0, 3) else 24
            out[i, :, :, :dim] = np.linalg.qr(g.normal(size=(L, H, dim, 16)))[0]
        return out
    if name == "circuit_subspaces.jsonl":
        e = rng.uniform(0, 1, size=(4, L, H, 16))
        return [{"layer": l, "head": h, "circuit": c, "side": sd, "dim": 25 if i in (0, 3) else 24, "span_dim": 4,
                 "span_energy": [float(x) for x in e[i, l, h]]}
                for i, (c, sd) in enumerate((("qk", "left"), ("qk", "right"), ("ov", "left"), ("ov", "right")))
                for l in range(L) for h in range(H)]
    if name == "losses_joint_fwd.npy":
        return joint_losses(np.load(run_dir / "losses_effect_fwd.npy"), L, H, interaction, rng)
    if name == "joint_examples.npy":  # after losses_joint_fwd.npy: every eval example
        return np.arange(len(np.load(run_dir / "losses_joint_fwd.npy")))
    if name == "joint_effect.jsonl":  # after losses_joint_fwd.npy
        gains = (lambda j: j[:, :1] - j[:, 1:])(np.load(run_dir / "losses_joint_fwd.npy"))
        return [{"scope": "model" if c == L else "layer", "layer": None if c == L else c,
                 "joint_fwd": float(gains[:, c].mean()), "joint_fwd_se": float(gains[:, c].std(ddof=1) / 6)}
                for c in range(L + 1)]
    if name == "func_change_halves.npy":  # after func_change.jsonl: its values on halves, with noise
        rows = [json.loads(r) for r in (run_dir / "func_change.jsonl").read_text().splitlines()]
        vals = np.array([[r[f] for r in rows] for f in ("func_change", "attn_jsd")])  # [2, L*H]
        return vals[:, None, None, :] * (1 + 0.3 * rng.normal(size=(2, 6, 2, L * H)))
    raise ValueError(f"synthetic runs do not know how to write {name}")


def make_run(root: Path, label: str, seed: int, L: int = 4, H: int = 6, N: int = 40, coupling: float = 0.5,
             subset: str = "fp-A", model: str = "synthetic-model", val_metric: float = 0.7, collapsed=False,
             without: tuple[str, ...] = (), interaction: float = 0.0) -> Path:
    """One measured run whose update U is `coupling`-correlated with importance; `without`:
    measurements it lacks (a run measured before they existed); `interaction`: how much all heads'
    updates of a layer at once gain beyond the sum of each alone (nats per example, update_joint)."""
    run = layout.RunId.from_label("RTE", label, seed)
    d = layout.run_dir(root, run)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed * 100 + (run.r or 0))
    n = L * H
    heads = [(l, h) for l in range(L) for h in range(H)]
    true_imp = np.abs(rng.normal(size=n)) * 0.05
    base = np.abs(rng.normal(size=(N, 1)))
    per_example = {"I_pre": _per_example(rng, true_imp, N, base, 1.0),
                   "I_post": _per_example(rng, true_imp, N, base, 1.2)}
    U = np.exp(coupling * (true_imp - true_imp.mean()) / true_imp.std() + rng.normal(size=n)) * 0.01
    g = true_imp + 0.01 * rng.normal(size=n)
    cols = {"U": U, "Urel": U / 3, **{f"U_{k}": U / 2 for k in "qkvo"}, "grad_norm": np.abs(g), "fisher": g ** 2,
            "gate_grad": np.abs(g), "gate_fisher": g ** 2, "taylor": g}
    measured = [m for m in registry.MEASUREMENTS if not m.optional and m.name not in without]
    for m in measured:
        for col, file in m.per_example_files.items():
            mat = per_example.get(col)
            if mat is None:
                mat = _per_example(rng, np.abs(rng.normal(size=n)) * 0.05, N, base, 1.0)
            atomic_save_npy(d / file, mat)
            diff = mat[:, 1:] - mat[:, :1]
            cols.setdefault(col, diff.mean(0))
            cols.setdefault(f"{col}_se", diff.std(0) / 6)
        values = {f: cols.get(m.column(f), np.abs(rng.normal(size=n))) for f in m.fields}
        atomic_write_jsonl(d / m.file, [{"layer": l, "head": h, **{f: float(v[i]) for f, v in values.items()}}
                                        for i, (l, h) in enumerate(heads)])
        for name in m.extra_files:
            content = extra_file(name, rng, L, H, d, interaction)
            (atomic_save_npy if name.endswith(".npy") else atomic_write_jsonl)(d / name, content)
        records.write_record(d, m.name, "synthetic", m.outputs)
    (d / layout.EVAL_SUBSET).write_text(json.dumps({"task": "RTE", "split": "validation", "indices": list(range(N)),
                                                    "fingerprint": subset, "size": N}))
    rc = {"label": label, "run": {"task": "RTE", "method": run.method, "seed": seed, "r": run.r},
          "config": {"model": model, "task": "RTE"}, "status": "complete", "theta0_hash": f"t0-{seed}",
          "theta1_hash": f"t1-{label}-{seed}", "collapsed": collapsed,
          "validation": {"theta0": {"metric_name": "accuracy", "metric": 0.5},
                         "theta1": {"metric_name": "accuracy", "metric": val_metric}, "majority_baseline": 0.52},
          "trainable": {"trainable": 1000 * (run.r or 100)}}
    (d / layout.RUN_CONFIG).write_text(json.dumps(rc))
    return d
