"""`headplast compare`: FFT vs LoRA for one task and seed, into COMPARE/<task>/seed<seed>/."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from headplast.analysis.compare import key_statistics, secondary_family
from headplast.analysis.config import AnalysisConfig
from headplast.analysis.subspace import circuit_null, overlap, random_within_parts, subspace_statistics
from headplast.arch.adapters import KINDS
from headplast.errors import HeadplastError
from headplast.measure.geometry import BASES_FILE, BASES_K, INTRUDERS_FILE, UPDATE_GEOMETRY
from headplast.store.schema import (AMPLIFICATION_FILE, CIRCUIT_BASES_FILE, CIRCUIT_SIDE_NAMES, CIRCUIT_SIDES,
                                    CIRCUIT_SUBSPACES_FILE)
from headplast.options import NONNEGATIVE, opt, option, validate
from headplast.plotting import compare_plots as cp
from headplast.report.compare_summary import compare_summary
from headplast.report.findings import findings
from headplast.report.headline import headline
from headplast.steps.analyse_step import analysed
from headplast.steps import versions
from headplast.steps.outcome import Outcome, recorded_step
from headplast.steps.runs import (check_comparable, input_hashes, load_per_example, measured_run, other_seeds,
                                  resolve_task, run_info)
from headplast.store import layout, records
from headplast.store.io import atomic_write_json, atomic_write_text, read_json, read_jsonl


def outputs(cfg: CompareConfig) -> tuple[str, ...]:
    return (*layout.with_format(layout.COMPARE_FIGURES, cfg.analysis.figure_format), layout.COMPARE_METRICS,
            layout.COMPARE_SUMMARY)


@dataclass(frozen=True)
class CompareConfig:
    task: str | None = option(None, "GLUE task (default: the one task with runs under --output-root)")
    seed: int = option(1, "seed of the two runs", **NONNEGATIVE)
    labels: tuple[str, ...] = option(("FFT", "LoRA_r8"), "the two runs, e.g. FFT LoRA_r8")
    output_root: str = option("outputs", "root under which runs are found and written")
    out_dir: str | None = option(None, "default: <output-root>/COMPARE/<task>/seed<seed>", aliases=("--out_dir",))
    subspace_k: int = option(8, f"top singular vectors per head in the subspace overlap of the two updates (at "
                             f"most {BASES_K})", low=1, high=BASES_K)
    noise_seed: int | None = option(None, "seed of the second runs whose overlap with these is the noise floor "
                                    "(default: the lowest other seed where both runs exist)", **NONNEGATIVE)
    analysis: AnalysisConfig = field(default=AnalysisConfig(), metadata=opt(cli=False))
    force: bool = option(False, "redo even if up to date")

    def __post_init__(self):
        validate(self)

    def out(self) -> Path:
        return Path(self.out_dir) if self.out_dir else layout.compare_dir(self.output_root, self.task, self.seed)


def run_compare(cfg: CompareConfig) -> Outcome:
    cfg = replace(cfg, task=resolve_task(cfg.output_root, cfg.task))
    if len(cfg.labels) != 2:
        raise HeadplastError("compare takes exactly two runs", "e.g. --labels FFT LoRA_r8")
    dirs = {lab: measured_run(cfg.output_root, cfg.task, lab, cfg.seed) for lab in cfg.labels}
    floor_dirs = noise_runs(cfg)
    out = cfg.out()
    inputs = {lab: input_hashes(d) for lab, d in dirs.items()}
    inputs["noise_floor"] = {str(d): records.read_record(d, UPDATE_GEOMETRY.name)["outputs"] for d in floor_dirs.values()}
    key = versions.key("compare", {"labels": list(cfg.labels), "analysis": asdict(cfg.analysis),
                                   "analysis_version": versions.version_of("analyse"),
                                       "subspace_k": cfg.subspace_k}, inputs)
    return recorded_step(out, "compare", key, outputs(cfg), lambda: _write_compare(cfg, dirs, floor_dirs, out),
                         cfg.force, lambda: str(out))


def noise_runs(cfg: CompareConfig) -> dict[str, Path]:
    """{label: the same method's run of another seed} for the overlap's noise floor ({} if none)."""
    geo = UPDATE_GEOMETRY.name
    common = set.intersection(*(set(other_seeds(cfg.output_root, cfg.task, lab, cfg.seed, geo)) for lab in cfg.labels))
    if cfg.noise_seed is not None and cfg.noise_seed not in common:
        raise HeadplastError(f"--noise-seed {cfg.noise_seed}: no measured runs {' and '.join(cfg.labels)} of that seed",
                             f"use one of {sorted(common)} or leave --noise-seed unset" if common else
                             "train and measure that seed first, or leave --noise-seed unset")
    seed = cfg.noise_seed if cfg.noise_seed is not None else min(common, default=None)
    if seed is None:
        return {}
    return {lab: layout.run_dir(cfg.output_root, layout.RunId.from_label(cfg.task, lab, seed)) for lab in cfg.labels}


def _write_compare(cfg: CompareConfig, dirs: dict, floor_dirs: dict, out: Path) -> None:
    infos = {lab: run_info(d) for lab, d in dirs.items()}
    check_comparable(list(infos.values()), "compare")
    dfs, stats, cases = {}, {}, {}
    for lab, d in dirs.items():
        dfs[lab], stats[lab], cases[lab] = analysed(d, cfg.analysis)
    a = cfg.analysis
    keys = key_statistics(dfs, a.top_k, a.top_quantile, a.bottom_quantile, a.n_boot, a.seed,
                          per_example={lab: load_per_example(d) for lab, d in dirs.items()},
                          n_boot_examples=a.n_boot_examples)
    n = len(next(iter(dfs.values())))
    first = infos[cfg.labels[0]]
    val = {lab: infos[lab]["val_metric"] for lab in cfg.labels}
    val.update(metric_name=first["val_metric_name"], theta0=first["val_metric_theta0"], majority=first["majority"])
    m = {"task": cfg.task, "seed": cfg.seed, "labels": list(cfg.labels), "n_heads": n, "k": a.top_k,
         "eval_subset_size": first["subset_size"], "topk_chance": min(a.top_k, n) / n,
         "expected_cases": cases[cfg.labels[0]]["important_but_static"]["expected_if_independent"],
         "runs": infos, "validation": val, "key_statistics": keys, "stats": stats, "cases": cases,
         "analysis_config": asdict(a)}
    importance = _grid(dfs[cfg.labels[0]], "I_pre")  # of theta0: the same for both runs
    phi, floors, m["subspace"] = subspaces(cfg, dirs, floor_dirs, importance)
    m["circuit_subspace"] = circuit_subspaces(cfg, dirs, floor_dirs, importance)
    m["update_shape"] = update_shape(dirs, dfs, compared_rank(infos))
    m["secondary"] = secondary_family(keys, stats)
    m["findings"] = findings(m)
    m["headline"] = headline(m)
    names = dict(zip(("i_vs_u", "stats", "update_dist", "headwise", "subspace"),
                     layout.with_format(layout.COMPARE_FIGURES, cfg.analysis.figure_format)))
    cp.compare_i_vs_u(dfs, stats, out / names["i_vs_u"])
    cp.compare_stats(m, stats, out / names["stats"])
    cp.compare_update_dist(dfs, out / names["update_dist"])
    cp.compare_headwise(dfs, out / names["headwise"])
    cp.compare_subspace(m["subspace"], phi, floors, importance, cfg.labels, out / names["subspace"])
    atomic_write_json(out / layout.COMPARE_METRICS, m)
    atomic_write_text(out / layout.COMPARE_SUMMARY, compare_summary(m))


def _grid(df, column: str) -> np.ndarray:
    """A heads.csv column as [L, H]."""
    return df.pivot(index="layer", columns="head", values=column).to_numpy(float)


def subspaces(cfg: CompareConfig, dirs: dict, floor_dirs: dict, importance: np.ndarray) -> tuple:
    """phi per head of the two runs, the noise floors and their statistics (for compare_metrics.json)."""
    a, b = cfg.labels
    bases = {lab: np.load(d / BASES_FILE) for lab, d in dirs.items()}
    phi = overlap(bases[a], bases[b], cfg.subspace_k)
    floors = {lab: overlap(bases[lab], np.load(floor_dirs[lab] / BASES_FILE), cfg.subspace_k) for lab in floor_dirs}
    an = cfg.analysis
    null = random_within_parts(bases[a], bases[b], cfg.subspace_k)
    sub = subspace_statistics(phi, floors, importance, cfg.subspace_k, bases[a].shape[2], an.n_boot, an.seed, null)
    sub["noise_seed"] = read_json(floor_dirs[a] / layout.RUN_CONFIG)["run"]["seed"] if floor_dirs else None
    sub["per_head"] = [{"layer": l, "head": h, "phi": _num(v), "null": _num(null[l, h]),
                        **{f"floor_{lab}": _num(f[l, h])
                                                               for lab, f in floors.items()}}
                       for (l, h), v in np.ndenumerate(phi)]
    if not floor_dirs:
        sub["note"] = ("no noise floor: no other seed has both runs measured (run with two seeds, e.g. --seeds 1 2, "
                       "to see how much two seeds of the same method share)")
    return phi, floors, sub


def circuit_sides(run_dir: Path) -> tuple | None:
    """(bases [4, L, H, D+1, K], energy of each vector inside θ0's span [4, L, H, K], dim of that span
    [4, L, H], each side's dim [4]) of a run's circuit updates (measure.circuit); None if the run has
    none (circuit_update skipped, or measured before its subspaces existed)."""
    b, rows = run_dir / CIRCUIT_BASES_FILE, run_dir / CIRCUIT_SUBSPACES_FILE
    if not (b.exists() and rows.exists()):
        return None
    bases = np.load(b, mmap_mode="r")  # read one side at a time (a 7B model's: about 1 GB per run)
    S, L, H, _, K = bases.shape
    span, span_dim, dims = np.zeros((S, L, H, K)), np.zeros((S, L, H)), np.zeros(S, dtype=int)
    for r in read_jsonl(rows):
        i = CIRCUIT_SIDES.index((r["circuit"], r["side"]))
        span[i, r["layer"], r["head"], :len(r["span_energy"])] = r["span_energy"]
        span_dim[i, r["layer"], r["head"]], dims[i] = r["span_dim"], r["dim"]
    return bases, span, span_dim, dims


def circuit_subspaces(cfg: CompareConfig, dirs: dict, floor_dirs: dict, importance: np.ndarray) -> dict:
    """Per side of ΔQK and ΔOV ("qk_left", ...): φ of the two runs' top-k singular subspaces, its
    null keeping each subspace's energy inside and outside θ0's span on that side
    (analysis.subspace.circuit_null), the noise floors and ρ(I_pre, φ); {} if either run has no
    circuit subspaces."""
    runs = {lab: circuit_sides(d) for lab, d in dirs.items()}
    if any(v is None for v in runs.values()):
        return {}
    floor_runs = {lab: v for lab, d in floor_dirs.items() if (v := circuit_sides(d)) is not None}
    (ba, sa, span_dim, dims), (bb, sb, _, _) = (runs[lab] for lab in cfg.labels)
    k, an, out = cfg.subspace_k, cfg.analysis, {}
    for i, side in enumerate(CIRCUIT_SIDES):
        dim = int(dims[i])
        cut = lambda bases: np.asarray(bases[i, :, :, :dim, :k], dtype=np.float64)  # noqa: E731  (D sides padded)
        phi = overlap(cut(ba), cut(bb), k)
        null = circuit_null(cut(ba), cut(bb), sa[i], sb[i], span_dim[i], dim, k)
        floors = {lab: overlap(cut(runs[lab][0]), cut(f[0]), k) for lab, f in floor_runs.items()}
        st = subspace_statistics(phi, floors, importance, k, dim, an.n_boot, an.seed, null)
        st["random_within_parts"]["what"] = ("mean φ if each subspace kept its energy inside the head's θ0 span on "
                                             "this side and outside it, and its directions within each were random")
        out["_".join(side)] = {"name": CIRCUIT_SIDE_NAMES[side], "dim": dim,
                               "span_dim": int(np.median(span_dim[i])), **st}
    return out


def compared_rank(infos: dict) -> int | None:
    """The LoRA rank the two runs are compared at (the smaller of the LoRA runs' ranks; None for two
    full fine-tunings): the r of the amplification factor of both."""
    ranks = [i["r"] for i in infos.values() if i["method"] == "lora" and i.get("r")]
    return min(ranks) if ranks else None


def _num(v) -> float | None:
    return float(v) if np.isfinite(v) else None


def _adapted(row: dict) -> bool:
    """Whether an intruders.jsonl row is of a matrix fine-tuning changed: measure.geometry writes
    max_cos = 1 for every vector of a matrix left as it was (not adapted, e.g. LoRA without O);
    such rows are not counted among the vectors examined."""
    return any(c != 1 for c in row["max_cos"]) or row["intruders"] > 0


def update_shape(dirs: dict, dfs: dict, rank: int | None = None) -> dict:
    """Per run: median stable rank / r90 / top share of the heads' updates, and intruder dimensions."""
    out = {}
    for lab, d in dirs.items():
        rows = [json.loads(line) for line in (d / INTRUDERS_FILE).read_text().splitlines()]
        df = dfs[lab]
        out[lab] = {**{f"median_{c}": _num(np.nanmedian(df[c])) for c in ("srank", "r90", "top_share")},
                    "intruders": sum(r["intruders"] for r in rows),
                    "intruders_per_module": {k: sum(r["intruders"] for r in rows if r["module"] == k) for k in KINDS},
                    "vectors_examined": sum(len(r["max_cos"]) for r in rows if _adapted(r)),
                    "matrices_adapted": sum(map(_adapted, rows)), "matrices": len(rows),
                    "intruder_k": rows[0]["k"], "intruder_epsilon": rows[0]["epsilon"]}
    amp = {lab: [json.loads(line) for line in (d / AMPLIFICATION_FILE).read_text().splitlines()]
           for lab, d in dirs.items() if (d / AMPLIFICATION_FILE).exists()}  # none: measured before it existed
    both = set.intersection(*({(r["layer"], r["module"]) for r in rows if r["amplification"] is not None}
                              for rows in amp.values())) if amp else set()
    for lab, rows in amp.items():  # over the matrices every run adapted, so that the medians compare
        out[lab]["amplification"] = amplification_summary(rows, rank, both)
    return out


def amplification_summary(rows: list[dict], rank: int | None = None, modules: set | None = None) -> dict:
    """Median over the matrices fine-tuning changed of the amplification factor ||ΔW||_F / ||UᵀW0V||_F
    on ΔW's top-r singular directions, and of the same on random directions (measure.circuit); at
    r = `rank` (the compared LoRA rank: each row's `by_r` at that r, or at its update's rank where
    that is smaller) where given and the rows have `by_r`, else at each row's own r (and
    `compared_rank` None); only over `modules` ((layer, module) pairs) where given."""
    if rank is not None and rows and all("by_r" in r for r in rows):
        rows = [_at_r(r, rank) for r in rows]
    else:  # measured before by_r existed: each row at its own r
        rank = None
    if modules is not None:  # the matrices the other run adapted (a LoRA on Q and V only: those)
        rows = [r for r in rows if (r["layer"], r["module"]) in modules]
    done = [r for r in rows if r["amplification"] is not None]
    med = lambda k: _num(np.median([r[k] for r in done])) if done else None  # noqa: E731
    return {"median": med("amplification"), "median_random": med("amplification_random"),
            "per_module": {k: _num(np.median(v)) for k in KINDS
                           if (v := [r["amplification"] for r in done if r["module"] == k])},
            "matrices": len(done), "r": sorted({r["r"] for r in done}),
            "r_setting": rows[0]["r_setting"] if rows else None, "compared_rank": rank}


def _at_r(row: dict, rank: int) -> dict:
    """The row at the largest r of its `by_r` not above `rank` (by_r's r are measure.circuit.AMP_RS,
    powers of two, up to the update's rank); no amplification where there is none."""
    rs = [int(q) for q in row["by_r"] if int(q) <= rank]
    if not rs:
        return {**row, "amplification": None, "amplification_random": None, "r": 0}
    return {**row, **row["by_r"][str(max(rs))], "r": max(rs)}
