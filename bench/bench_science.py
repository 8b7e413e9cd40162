"""Benchmark of the science: does the default experiment answer the question, for every seed?

Runs the main job (`headplast pipeline`, every default) once per seed, each as its own
process and timed, then tabulates per seed: validation metric of theta0, FFT and LoRA and
the majority class; split-half reliability of I_pre and I_post (per method); rho(I_pre, U)
with its 95% CI (the wider of the bootstraps over heads and over eval examples) for both
methods; wall time. Each bar of the default experiment is checked:

  theta0 >= majority + 0.10; FFT and LoRA >= theta0 + 0.05, neither collapsed;
  reliability of I_pre and I_post >= 0.8; eval subset >= 800 examples; wall time <= 25 min.

    python bench/bench_science.py                          # seeds 1 2 3 into bench_science_out/
    python bench/bench_science.py --seeds 1 --extra --eval-size 3000

Writes bench/results/science.md and science.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from headplast.analysis.stats import combined  # noqa: E402
from headplast.report.headline import headline  # noqa: E402
BARS = {"theta0_above_majority": 0.10, "tuned_above_theta0": 0.05, "reliability": 0.8, "eval_size": 800,
        "seconds": 25 * 60}


def _rel(stats: dict, which: str) -> float:
    v = stats["reliability"].get(which, {}).get("reliability")
    return math.nan if v is None else v


def row(root: Path, seed: int, seconds: float) -> dict:
    cmp_dirs = sorted((root / "COMPARE").glob(f"*/seed{seed}"))
    m = json.loads((cmp_dirs[0] / "compare_metrics.json").read_text())
    fft, lora = m["labels"]
    v = m["validation"]
    r = {"seed": seed, "task": m["task"], "eval_size": m["eval_subset_size"], "majority": v["majority"],
         "theta0": v["theta0"], fft: v[fft], lora: v[lora], "seconds": seconds, "labels": [fft, lora]}
    for lab in (fft, lora):
        st = m["stats"][lab]
        p = st["pairs"]["I_pre~U"]
        r[f"rel_I_pre_{lab}"], r[f"rel_I_post_{lab}"] = _rel(st, "I_pre"), _rel(st, "I_post")
        # the intervals the answer uses: layer blocks ∪ eval examples, across heads and within layers
        r[f"rho_{lab}"], r[f"ci_{lab}"] = p["spearman"], combined(p)["ci95"]
        w = combined(p, within=True)
        r[f"rho_within_{lab}"], r[f"ci_within_{lab}"] = w["estimate"], w["ci95"]
        r[f"collapsed_{lab}"] = m["runs"][lab]["collapsed"]
    r["headline"] = headline(m)  # as the current code words it
    r["bars"] = bars(r)
    return r


def bars(r: dict) -> dict:
    fft, lora = r["labels"]
    rels = [r[f"rel_{w}_{lab}"] for w in ("I_pre", "I_post") for lab in (fft, lora)]
    return {"theta0 >= majority + 0.10": r["theta0"] >= r["majority"] + BARS["theta0_above_majority"],
            f"{fft} >= theta0 + 0.05": r[fft] >= r["theta0"] + BARS["tuned_above_theta0"],
            f"{lora} >= theta0 + 0.05": r[lora] >= r["theta0"] + BARS["tuned_above_theta0"],
            "none collapsed": not (r[f"collapsed_{fft}"] or r[f"collapsed_{lora}"]),
            "reliabilities >= 0.8": all(x >= BARS["reliability"] for x in rels),
            "eval subset >= 800": r["eval_size"] >= BARS["eval_size"],
            "time <= 25 min": r["seconds"] <= BARS["seconds"]}


def table(rows: list[dict]) -> list[str]:
    fft, lora = rows[0]["labels"]
    out = [f"| seed | majority | θ0 | {fft} | {lora} | rel. I_pre | rel. I_post {fft} | rel. I_post {lora} | "
           f"ρ(I_pre,U) {fft} [95% CI] | within layers | ρ(I_pre,U) {lora} [95% CI] | within layers | eval N | "
           "wall min | bars met |",
           "|---|" + "---:|" * 13 + "---|"]
    for r in rows:
        ok = [k for k, v in r["bars"].items() if not v]
        out.append(f"| {r['seed']} | {r['majority']:.3f} | {r['theta0']:.3f} | {r[fft]:.3f} | {r[lora]:.3f} | "
                   f"{r[f'rel_I_pre_{fft}']:.2f} | {r[f'rel_I_post_{fft}']:.2f} | {r[f'rel_I_post_{lora}']:.2f} | "
                   + "".join(f"{r[f'rho{w}_{lab}']:+.2f} [{r[f'ci{w}_{lab}'][0]:+.2f}, {r[f'ci{w}_{lab}'][1]:+.2f}] | "
                             for lab in (fft, lora) for w in ("", "_within")) +
                   f"{r['eval_size']} | {r['seconds'] / 60:.1f} | {'all' if not ok else 'NOT: ' + ', '.join(ok)} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--output-root", default="bench_science_out")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "science"))
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further flags for headplast pipeline")
    ap.add_argument("--tabulate-only", action="store_true", help="re-read finished runs (seconds from the last "
                    "science.json) instead of running them")
    a = ap.parse_args(argv)
    rows = []
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if a.tabulate_only:
        secs = {r["seed"]: r["seconds"] for r in json.loads(Path(a.out).with_suffix(".json").read_text())}
        rows = [row(Path(a.output_root), s, secs[s]) for s in a.seeds]
    for seed in [] if a.tabulate_only else a.seeds:
        cmd = [sys.executable, "-m", "headplast", "pipeline", "--seeds", str(seed), "--output-root",
               a.output_root, *a.extra]
        t = time.time()
        subprocess.run(cmd, check=True, env=env)
        rows.append(row(Path(a.output_root), seed, time.time() - t))
        print("\n".join(table(rows)), flush=True)
    lines = table(rows)
    text = "\n".join(["# Default experiment, seeds " + " ".join(map(str, a.seeds)), "", *lines, ""]
                     + [f"seed {r['seed']}: " + " / ".join(r["headline"]) for r in rows])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(text)
    return 0 if all(all(r["bars"].values()) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
