"""compare_summary.txt in the guide's shape: Spearman, top-K overlap, counter-example counts,
main findings (written from the numbers)."""

from __future__ import annotations

from headplast.analysis.names import PRIMARY, PRIMARY_PAIR, WITHIN, display_name, pair_name, stat_of
from headplast.report.findings import comparison_table, count_text, difference_verdict, stat_text, table_text
from headplast.analysis.interactions import adds_up
from headplast.report.headline import beyond_lines, change_measures_lines, effect_lines, interaction_numbers, num_text
from headplast.store import schema

RULE = "=" * 60
# counter-examples of a measurement's section (analysis.cases: each names the `effect` column it is of)
CASE_TITLES = {"moved_but_inert": "moved-but-inert (top U, effect near 0)",
               "small_but_decisive": "small-but-decisive (bottom U, top effect)"}


def sections() -> dict[str, list[schema.Schema]]:
    """compare_summary.txt's sections of correlations, by title, in the schemas' order; the
    primary one (importance vs update) first."""
    out = {schema.PRIMARY_SECTION: []}
    for s in schema.SCHEMAS:
        if s.summary_pairs:
            out.setdefault(s.section_title, []).append(s)
    return out


def compare_summary(m: dict) -> str:
    la, lb = m["labels"]
    keys, k = m["key_statistics"], m["k"]
    out = [RULE, f"Comparison: {la} vs {lb}  ({m['task']}, seed {m['seed']}, {m['n_heads']} heads, "
                 f"eval subset {m['eval_subset_size']} examples)", RULE, ""]
    if m.get("headline"):
        out += [f"## Answer: does importance before fine-tuning predict the update? (primary endpoint {display_name(PRIMARY)}, "
                "across heads and within layers; the rest exploratory, Holm-adjusted)"]
        out += [f"  {line}" for line in m["headline"]]
        out += [f"  {line}" for line in effect_lines(m) + beyond_lines(m) + change_measures_lines(m)] + [""]

    def block(name, title=None):
        title = title or display_name(name)
        d = keys[name]
        lo, hi = d["ci95"]
        lines = [f"  {title}:", f"    {la}: {stat_text(name, d[la], digits=4)}",
                 f"    {lb}: {stat_text(name, d[lb], digits=4)}",
                 f"    difference ({lb} - {la}): {stat_text(name, d['difference'], True, 4)}  "
                 f"95% CI [{lo:+.4f}, {hi:+.4f}]"
                 f"  ({difference_verdict(m, name)})"]
        if d.get("ci95_examples"):
            (hl, hh), (el, eh) = d["ci95_heads"], d["ci95_examples"]
            lines.append(f"    (CI = union of resampling layers [{hl:+.4f}, {hh:+.4f}] and eval examples "
                         f"[{el:+.4f}, {eh:+.4f}])")
        return lines
    (_, primary), *further = sections().items()
    out.append(f"## 1. {schema.PRIMARY_SECTION}")
    out += block(PRIMARY)
    if WITHIN in keys:
        out += block(WITHIN)
    for name in _rho_names(primary, keys):
        out += block(name)
    out += ["", f"## 2. Top-{k} overlap"]
    out += block(pair_name("I_pre", "U", f"top{k}_overlap"), f"top-{k} overlap (I_pre, U)")
    out += [f"    chance level: {m['topk_chance']:.4f}"]
    out += ["", "## 3. Counter-example counts"]
    out += block("n_important_but_static", "important-but-static")
    out += block("n_plastic_but_unimportant", "plastic-but-unimportant")
    out += [f"    expected if independent: {m['expected_cases']:.1f} each"]
    n = 4
    for title, members in further:
        names = _rho_names(members, keys)
        if not names:  # compared before it existed
            continue
        out += ["", f"## {n}. {title}"]
        for name in names:
            out += block(name)
        out += case_lines(m, members)
        if any(s.name == schema.UPDATE_EFFECT.name for s in members):
            out += interaction_lines(m)
        n += 1
    beyond = [name for name in keys if stat_of(name) == "rho_beyond"]
    if beyond:
        out += ["", f"## {n}. What importance adds beyond the gradient at θ0, ||W0|| and the layer (partial ρ; "
                    "intervals resample layers)"]
        for name in beyond:
            out += block(name)
        n += 1
    shape = shape_lines(m, n)
    out += shape
    out += ["", f"## {n + bool(shape)}. Main findings"]
    if "secondary" in m:  # compared before the table existed: its findings hold the per-statistic sentences
        out += ["  Every statistic (intervals resample layers and eval examples; verdicts exploratory, Holm-adjusted "
                "over the comparison's secondary tests):"] + [f"    {line}" for line in table_text(comparison_table(m))]
    out += resolution_lines(m.get("secondary", {}))
    out += [f"  - {line}" for line in m["findings"]] + ["", RULE, ""]
    return "\n".join(out)


def _rho_names(members: list[schema.Schema], keys: dict) -> list[str]:
    """The key statistics (ρ) of a section's pairs that the comparison has; the primary endpoint
    has its own block."""
    names = (pair_name(x, y, "rho") for s in members for x, y in s.summary_pairs if pair_name(x, y) != PRIMARY_PAIR)
    return [name for name in dict.fromkeys(names) if name in keys]


def interaction_lines(m: dict) -> list[str]:
    """Per run that has them (analysis.interactions): do the heads' update effects add up, for the
    whole model, and the ratio joint / sum of each layer."""
    runs = [(lab, m["stats"][lab]["interactions"]) for lab in m["labels"] if "interactions" in m["stats"][lab]]
    if not runs:  # measured before update_joint existed
        return []
    out = ["  Interactions: do the heads' update effects add up? (joint: every head's update at once; sum: of each "
           "head's alone, effect_fwd; ratio = joint / sum, 1 if they add up; interaction = joint − sum, 95% "
           "t-interval over eval examples)"]
    for lab, inter in runs:
        row = inter["model"]
        verdict = {True: "no detectable interaction", False: "they do not add up", None: "undefined"}[adds_up(row)]
        out.append(f"    {lab}, whole model: {interaction_numbers(row)}: {verdict}")
        ratios = ", ".join(f"L{r['layer']} {num_text(r['ratio'], '.2f')}{'*' if adds_up(r) is False else ''}"
                           for r in inter["layers"])
        out.append(f"    {lab}, ratio per layer (* interval excludes 0, unadjusted for the {len(inter['layers'])} "
                   f"layers): {ratios}")
    return out


def case_lines(m: dict, members: list[schema.Schema]) -> list[str]:
    """Counts of the counter-examples of an effect column of the section's measurements, per run."""
    la, lb = m["labels"]
    columns = {c for s in members for c in s.head_columns}
    out = []
    for kind, title in CASE_TITLES.items():
        c = {lab: m["cases"][lab].get(kind, {}) for lab in (la, lb)}
        if not {c[lab].get("effect") for lab in (la, lb)} & columns:
            continue
        counts = [count_text(c[lab]["count"]) if "count" in c[lab] else "-" for lab in (la, lb)]
        out.append(f"  {title}: {la} {counts[0]}, {lb} {counts[1]}"
                   + f" (expected if independent: {c[la].get('expected_if_independent', float('nan')):.1f})")
    return out


def shape_lines(m: dict, n: int = 5) -> list[str]:
    """Section n: the shape of the updates, intruder dimensions and the FFT vs LoRA subspace overlap."""
    if "subspace" not in m:  # compared before update geometry existed
        return []
    la, lb = m["labels"]
    sh, sub = m["update_shape"], m["subspace"]
    out = ["", f"## {n}. Shape of the updates"]
    for lab in (la, lb):
        s = sh[lab]
        out.append(f"  {lab}: median over heads: stable rank {s['median_srank']:.2f}, r90 {s['median_r90']:.0f}, "
                   f"top singular value's share {s['median_top_share']:.2f}; intruder dimensions "
                   f"{s['intruders']} of {s['vectors_examined']} top singular vectors "
                   + (f"of the {s['matrices_adapted']} adapted matrices " if "matrices_adapted" in s else "") +
                   f"({', '.join(f'{k.upper()} {n}' for k, n in s['intruders_per_module'].items())}; "
                   f"top-{s['intruder_k']}, |cos| < {s['intruder_epsilon']})")
    amp = {lab: sh[lab].get("amplification") for lab in (la, lb)}
    if all(a and a["median"] is not None for a in amp.values()):
        r = sorted({x for a in amp.values() for x in a["r"]})
        at = next((a["compared_rank"] for a in amp.values() if a.get("compared_rank")), None)
        out.append("  amplification ||ΔW||_F / ||UᵀW0V||_F on ΔW's top-r singular directions (Hu et al. 2021 "
                   f"§7.3; r {', '.join(map(str, r))}"
                   + (f", both at the compared LoRA rank {at} or the largest power of two below it" if at else "")
                   + "), median over adapted matrices: "
                   + "; ".join(f"{lab} {a['median']:.2f} (random directions {a['median_random']:.2f})"
                               for lab, a in amp.items()))
    p, rho = sub["phi"], sub["rho_I_pre_phi"]
    out.append(f"  subspace overlap φ of {la} and {lb} (top-{sub['k']} left singular vectors per head): mean "
               f"{p['mean']:.3f}, median {p['median']:.3f} (random subspaces: {sub['random_subspaces']:.3f})")
    null = sub.get("random_within_parts") or {}
    if null.get("mean") is not None:
        d = null["phi_minus_null"]
        out.append(f"    chance keeping each part's share (random directions within Q, K, V, O): mean "
                   f"{null['mean']:.3f}; φ minus it {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
                   "(paired over heads, intervals resample layers; k / 4d above is too weak where both updates sit in "
                   "one part)")
    for lab, f in sub["noise_floor"].items():
        d = f["phi_minus_floor"]
        out.append(f"    noise floor, {lab} seed {m['seed']} vs seed {sub['noise_seed']}: mean {f['mean']:.3f}; "
                   f"φ minus floor {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
    if sub.get("note"):
        out.append(f"    {sub['note']}")
    out += circuit_subspace_lines(m)
    out.append(f"  {display_name(pair_name('I_pre', 'φ', 'rho'))}: {rho['spearman']:+.3f}  95% CI [{rho['ci95'][0]:+.3f}, {rho['ci95'][1]:+.3f}] "
               "(do important heads get the same directions from both methods?)")
    return out


def resolution_lines(sec: dict) -> list[str]:
    """The Holm family's size, and the tests whose bootstrap p cannot get below alpha / m with the
    resamples drawn (a p beyond every resample is only bounded by 2 / (B + 1))."""
    if "family_size" not in sec:
        return []
    out = [f"  Holm family: {sec['family_size']} secondary tests (alpha {sec['alpha']})."]
    if sec["cannot_reach_alpha"]:
        out.append(f"  With the resamples drawn, {len(sec['cannot_reach_alpha'])} of them cannot reach Holm's bar "
                   f"(2 / (B + 1) times {sec['family_size']} is not below {sec['alpha']}): "
                   f"{', '.join(sec['cannot_reach_alpha'])}; raise --n-boot / --n-boot-examples to test them.")
    return out


def circuit_subspace_lines(m: dict) -> list[str]:
    """The overlap of the two runs' circuit updates per side (steps.compare_step.circuit_subspaces)."""
    cs = m.get("circuit_subspace") or {}
    if not cs:
        return []
    la, lb = m["labels"]
    k = next(iter(cs.values()))["k"]
    out = [f"  subspace overlap φ of {la} and {lb} on the circuit updates (top-{k} singular vectors of ΔQK and ΔOV "
           "per head, residual-stream coordinates; chance keeps each subspace's energy inside the head's θ0 span "
           "on that side and outside it, directions random within each):"]
    for side in cs.values():
        p, null = side["phi"], side["random_within_parts"]
        if p.get("mean") is None:
            out.append(f"    {side['name']}: no head changed")
            continue
        d = null["phi_minus_null"]
        floors = "; ".join(f"noise floor {lab} seed {m['seed']} vs {m['subspace'].get('noise_seed')}: {f['mean']:.3f}"
                           for lab, f in side["noise_floor"].items() if f.get("mean") is not None)
        rho = side["rho_I_pre_phi"]
        out.append(f"    {side['name']} (θ0 span {side['span_dim']} of {side['dim']}): φ mean {p['mean']:.3f}; chance "
                   f"{null['mean']:.3f}, φ minus it {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]; random "
                   f"subspaces {side['random_subspaces']:.3f}" + (f"; {floors}" if floors else "")
                   + f"; ρ(I_pre, φ) {rho['spearman']:+.2f} [{rho['ci95'][0]:+.2f}, {rho['ci95'][1]:+.2f}]")
    return out
