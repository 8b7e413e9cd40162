"""Synthetic run directories: measurement files with known structure, no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from headplast.orchestration import layout


def make_run(root: Path, label: str, seed: int, L: int = 4, H: int = 6, N: int = 40, coupling: float = 0.5,
             subset: str = "fp-A", model: str = "synthetic-model", val_metric: float = 0.7, collapsed=False) -> Path:
    """One measured run whose update U is `coupling`-correlated with importance."""
    method, r = layout.parse_label(label)
    d = layout.run_dir(root, layout.RunId("RTE", method, seed, r))
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed * 100 + (r or 0))
    heads = [(l, h) for l in range(L) for h in range(H)]
    true_imp = np.abs(rng.normal(size=L * H)) * 0.05
    per_ex = true_imp + 0.05 * rng.normal(size=(N, L * H))
    base = np.abs(rng.normal(size=(N, 1)))
    losses_pre = np.hstack([base, base + per_ex]).astype(np.float32)
    per_post = true_imp * 1.2 + 0.05 * rng.normal(size=(N, L * H))
    losses_post = np.hstack([base, base + per_post]).astype(np.float32)
    U = np.exp(coupling * (true_imp - true_imp.mean()) / true_imp.std() + rng.normal(size=L * H)) * 0.01
    np.save(d / layout.LOSSES["pre"], losses_pre)
    np.save(d / layout.LOSSES["post"], losses_post)

    def rows(fields):
        return "".join(json.dumps({"layer": l, "head": h, **{k: float(v[i]) for k, v in fields.items()}}) + "\n"
                       for i, (l, h) in enumerate(heads))
    for tag, m in (("pre", losses_pre), ("post", losses_post)):
        diff = m[:, 1:] - m[:, :1]
        (d / layout.IMPORTANCE[tag]).write_text(rows({"importance": diff.mean(0), "importance_se": diff.std(0) / 6,
                                                      "metric_delta": -diff.mean(0), "kl": diff.mean(0) ** 2}))
    g = true_imp + 0.01 * rng.normal(size=L * H)
    (d / layout.GRADFISHER).write_text(rows({"grad_norm": np.abs(g), "fisher": g ** 2, "gate_grad": np.abs(g),
                                             "gate_fisher": g ** 2, "taylor": g}))
    parts = {k: U / 2 for k in ("U_q", "U_k", "U_v", "U_o")}
    (d / layout.UPDATE).write_text(rows({"U": U, "Urel": U / 3, **parts}))
    (d / layout.EVAL_SUBSET).write_text(json.dumps({"task": "RTE", "split": "validation", "indices": list(range(N)),
                                                    "fingerprint": subset, "size": N}))
    rc = {"label": label, "run": {"task": "RTE", "method": method, "seed": seed, "r": r},
          "config": {"model": model, "task": "RTE"}, "status": "complete", "theta0_hash": f"t0-{seed}",
          "theta1_hash": f"t1-{label}-{seed}", "collapsed": collapsed,
          "validation": {"theta0": {"metric_name": "accuracy", "metric": 0.5},
                         "theta1": {"metric_name": "accuracy", "metric": val_metric}, "majority_baseline": 0.52},
          "trainable": {"trainable": 1000 * (r or 100)}}
    (d / layout.RUN_CONFIG).write_text(json.dumps(rc))
    return d
