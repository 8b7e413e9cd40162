"""What each per-head measurement writes and where its numbers go, torch-free: the files and
heads.csv columns, the statistics' pairs, the comparison statistics, the report's table and maps,
the `--rank-by` scores. analysis, plotting, report and train read these schemas (SCHEMAS) and
never import the code that computes them (headplast.measure attaches a compute function to each).

A new measurement is a `Schema` here and a `Measurement(schema, result, compute)` in measure/:
everything downstream follows from the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from headplast.errors import HeadplastError, did_you_mean

NEEDS = ("theta0", "theta1", "eval")
ABLATIONS = ("zero", "mean", "resample")  # how a head is removed (MeasureConfig.ablation)
KINDS = ("q", "k", "v", "o")  # a head's parts (arch.adapters.KINDS)
PRIMARY_SECTION = "Spearman correlation (importance vs update)"  # compare_summary.txt's section 1

Pair = tuple[str, str]


@dataclass(frozen=True)
class Schema:
    name: str  # step name; the file is <name>.jsonl with one row per head
    fields: tuple[str, ...]  # the file's per-head fields, in order (its result's head_fields())
    needs: tuple[str, ...]  # of NEEDS
    columns: dict = field(default_factory=dict)  # file field -> heads.csv column (default: same name)
    labels: dict = field(default_factory=dict)  # heads.csv column -> axis label
    log_columns: tuple[str, ...] = ()  # positive magnitudes: log axes
    pairs: tuple[Pair, ...] = ()  # (x, y) heads.csv columns this adds to stats.json
    settings: tuple[str, ...] = ()  # MeasureConfig fields that change the result
    # .npy of per-example values [N, 1 + L*H] of the first field (split-half reliability, example
    # bootstrap), or {field: .npy} for several fields
    per_example: str | dict | None = None
    # (MeasureConfig) -> bool: computed only when asked for; None: always. Not compared: two
    # declarations of one schema hold different lambdas
    enabled: Callable | None = field(default=None, compare=False)
    # further files the result writes beside its jsonl (result.extra_files())
    extra_files: tuple[str, ...] = ()
    # computed by every process of a torchrun / accelerate launch together, each its share of the
    # heads (headplast.measure.shard); the others are computed by rank 0 alone
    split: bool = False
    # the version of its compute code, part of its key: bump it when a change alters what it
    # writes for the same inputs (headplast.steps.versions says when); 1 = before versions were kept
    version: int = 1
    # pairs whose ρ difference FFT vs LoRA is a key statistic of a comparison (compare_metrics.json)
    compare: tuple[Pair, ...] = ()
    # pairs compare_summary.txt shows (default: `compare`), under `section` (None: its own
    # section named after it; PRIMARY_SECTION: with the importance-vs-update correlations)
    summary: tuple[Pair, ...] | None = None
    section: str | None = None
    table: tuple[str, ...] = ()  # columns in the report's heads table (once if shared, else per run)
    heatmap: tuple[str, ...] = ()  # columns drawn as layer x head maps in the report
    rank_by: tuple[str, ...] = ()  # columns that can guide LoRA ranks (train --rank-by)
    # False for a measurement added after runs were measured: computed by default, but a run
    # measured before it existed still reads (analysis, comparison, report skip what it lacks)
    required: bool = True
    # columns that measure how much fine-tuning changed a head: ρ(I_pre, column) is also given
    # beyond what BEYOND_GIVEN predicts (stats.json's pairs[...]["beyond"], the comparison, the answer)
    plasticity: tuple[str, ...] = ()
    # .npy [fields, splits, 2, L·H]: each field computed on both halves of random splits of the eval
    # data (a measure that is not a mean over examples); their agreement is its split-half reliability
    halves: str | None = None

    def __post_init__(self):
        bad = set(self.needs) - set(NEEDS)
        if bad:
            raise ValueError(f"{self.name}: unknown needs {bad}; use {NEEDS}")
        cols = set(self.head_columns)
        for what in ("table", "heatmap", "rank_by", "log_columns", "plasticity"):
            if set(getattr(self, what)) - cols:
                raise ValueError(f"{self.name}: {what} {set(getattr(self, what)) - cols} are not its columns")

    @property
    def optional(self) -> bool:
        return self.enabled is not None

    def is_enabled(self, cfg) -> bool:
        if self.name in getattr(cfg, "skip", ()):  # MeasureConfig.skip: not this time
            return False
        return self.enabled is None or bool(self.enabled(cfg))

    @property
    def on_device(self) -> bool:
        """Computed on the compute device in --dtype (the others use theta0/theta1 in fp32 on the
        CPU: Inputs.model(exact=True)); --dtype is then one of its settings."""
        return "dtype" in self.settings

    @property
    def file(self) -> str:
        return f"{self.name}.jsonl"

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.file,) + tuple(self.per_example_files.values()) + self.extra_files

    @property
    def per_example_files(self) -> dict[str, str]:
        """heads.csv column -> the .npy of its per-example values."""
        if isinstance(self.per_example, dict):
            return {self.column(f): file for f, file in self.per_example.items()}
        return {self.main_column: self.per_example} if self.per_example else {}

    @property
    def shared(self) -> bool:
        """Depends on theta0 only: computed once for every run that starts from the same theta0."""
        return "theta1" not in self.needs

    def column(self, f: str) -> str:
        return self.columns.get(f, f)

    @property
    def head_columns(self) -> tuple[str, ...]:
        return tuple(self.column(f) for f in self.fields)

    @property
    def main_column(self) -> str:
        """The column its per-example values are the reliability of (the first field)."""
        return self.column(self.fields[0])

    @property
    def summary_pairs(self) -> tuple[Pair, ...]:
        return self.compare if self.summary is None else self.summary

    @property
    def section_title(self) -> str:
        return self.section or f"Spearman correlation ({self.name})"


# --- the measurements --------------------------------------------------------------------------

def _importance_columns(col: str) -> dict:
    return {"importance": col, "importance_se": f"{col}_se", "metric_delta": f"{col}_metric_delta", "kl": f"{col}_kl"}


IMPORTANCE_FIELDS = ("importance", "importance_se", "metric_delta", "kl")
_WHEN = {"pre": ("theta0", "before"), "post": ("theta1", "after")}


def importance(tag: str) -> Schema:
    """Importance before (pre) or after (post) fine-tuning under the first --ablation."""
    col, (which, when) = f"I_{tag}", _WHEN[tag]
    post = tag == "post"
    return Schema(
        f"importance_{tag}", IMPORTANCE_FIELDS, needs=(which, "eval"), columns=_importance_columns(col),
        labels={col: f"importance {when} fine-tuning, {col} (Δ loss, nats)"},
        pairs=(("I_pre", "I_post"),) if post else (), settings=("ablation", "dtype"),
        per_example=f"losses_{tag}.npy", split=True, compare=(("I_pre", "I_post"),) if post else (),
        section=PRIMARY_SECTION, table=(col,), heatmap=(col,), rank_by=() if post else (col,))


def importance_variant(tag: str, ablation: str) -> Schema:
    """Importance under a further ablation of --ablation (computed only when asked for): its rank
    agreement with the main importance and the other variants, and the main correlations under it."""
    col, main, (which, when) = f"I_{tag}_{ablation}", f"I_{tag}", _WHEN[tag]
    others = [f"I_{tag}_{a}" for a in ABLATIONS[ABLATIONS.index(ablation) + 1:]]
    pairs = ((main, col), *((col, o) for o in others), (col, "U"))
    if tag == "post":
        pairs += (("I_pre_" + ablation, col),)
    return Schema(
        f"importance_{tag}_{ablation}", IMPORTANCE_FIELDS, needs=(which, "eval"), columns=_importance_columns(col),
        labels={col: f"importance {when} fine-tuning, {ablation} ablation, {col} (Δ loss, nats)"},
        pairs=pairs, settings=("dtype",), per_example=f"losses_{tag}_{ablation}.npy", split=True,
        enabled=lambda cfg: ablation in cfg.ablation[1:])


IMPORTANCE_PRE = importance("pre")
IMPORTANCE_POST = importance("post")
VARIANTS = tuple(importance_variant(tag, a) for a in ABLATIONS for tag in ("pre", "post"))

UPDATE = Schema(
    "update", ("U", "Urel", "U_q", "U_k", "U_v", "U_o", "W0"), needs=("theta0", "theta1"),
    labels={"U": "update magnitude U = ||ΔW_head||_F", "Urel": "relative update Urel = U / ||W0_head||",
            "W0": "pretrained weight norm ||W0_head||_F"},
    log_columns=("U", "Urel", "W0"), plasticity=("U",),
    pairs=(("I_pre", "U"), ("I_pre", "Urel"), ("I_post", "U"), ("I_post", "Urel")),
    compare=(("I_pre", "U"), ("I_pre", "Urel"), ("I_post", "U"), ("I_post", "Urel")),
    summary=(("I_pre", "U"), ("I_pre", "Urel"), ("I_post", "U")), section=PRIMARY_SECTION,
    table=("U", "Urel"), heatmap=("U",), rank_by=("U",),
    version=3)  # 2: W0 (issue 30 item 4); 3: squared norms summed in float64 (last bits), K/V per query head under GQA

GRADFISHER = Schema(
    "gradfisher_pre", ("grad_norm", "fisher", "gate_grad", "gate_fisher", "taylor"), needs=("theta0", "eval"),
    labels={"grad_norm": "gradient norm ||∂L/∂θ_head||", "fisher": "empirical Fisher (sum over head params)",
            "gate_grad": "gate gradient mean |∂L_x/∂g|", "gate_fisher": "gate Fisher mean (∂L_x/∂g)^2",
            "taylor": "Taylor estimate −mean ∂L_x/∂g (nats)"},
    log_columns=("grad_norm", "fisher", "gate_grad", "gate_fisher"),
    pairs=(("I_pre", "grad_norm"), ("I_pre", "fisher"), ("I_pre", "gate_grad"), ("I_pre", "taylor")),
    settings=("dtype",), version=2)  # 2: grad_norm's squares summed in float64 (last bits); K/V per query head under GQA

_EFFECT_PAIRS = (("I_pre", "effect_fwd"), ("U", "effect_fwd"), ("I_post", "effect_rev"), ("U", "effect_rev"))
UPDATE_EFFECT = Schema(
    "update_effect", ("effect_fwd", "effect_fwd_se", "effect_rev", "effect_rev_se"), needs=("theta0", "theta1", "eval"),
    labels={"effect_fwd": "update effect (forward): loss gain from this head's update alone (nats)",
            "effect_rev": "update effect (reverse): loss when only this head is reverted to θ0 (nats)"},
    pairs=_EFFECT_PAIRS, settings=("dtype",),
    per_example={"effect_fwd": "losses_effect_fwd.npy", "effect_rev": "losses_effect_rev.npy"}, split=True,
    compare=_EFFECT_PAIRS,
    summary=(("U", "effect_fwd"), ("I_pre", "effect_fwd"), ("U", "effect_rev"), ("I_post", "effect_rev")),
    section="Update effect: does a head's own update matter? (effect_fwd: loss gain from applying only this "
            "head's update to θ0; effect_rev: loss from reverting only this head in θ1)",
    table=("effect_fwd", "effect_rev"), heatmap=("effect_fwd",), rank_by=("effect_fwd",))

GEOMETRY_STATS = ("fro", "srank", "r90", "top_share")
GEOMETRY_PARTS = (*KINDS, "all")
BASES_FILE = "update_bases.npy"
INTRUDERS_FILE = "intruders.jsonl"


def geometry_field(stat: str, part: str) -> str:
    return stat if part == "all" else f"{stat}_{part}"


UPDATE_GEOMETRY = Schema(
    "update_geometry", tuple(geometry_field(s, p) for p in GEOMETRY_PARTS for s in GEOMETRY_STATS),
    needs=("theta0", "theta1"),
    labels={"srank": "stable rank of the head's update ||ΔW||²_F / ||ΔW||²_2",
            "r90": "effective rank r90 of the head's update",
            "top_share": "top singular value's share of the head's update energy"},
    pairs=(("I_pre", "srank"),), settings=("intruder_k", "intruder_epsilon"),
    extra_files=(BASES_FILE, INTRUDERS_FILE), table=("srank",),
    version=2)  # 2: bases keep directions above the relative rank threshold only (issue 29 item 8)

AMPLIFICATION_FILE = "amplification.jsonl"
CIRCUIT_BASES_FILE = "circuit_bases.npy"
CIRCUIT_SUBSPACES_FILE = "circuit_subspaces.jsonl"
# the sides of the circuit maps whose subspaces are compared (measure.circuit), in circuit_bases.npy's order
CIRCUIT_SIDES = (("qk", "left"), ("qk", "right"), ("ov", "left"), ("ov", "right"))
CIRCUIT_SIDE_NAMES = {("qk", "left"): "ΔQK query side", ("qk", "right"): "ΔQK key side",
                      ("ov", "left"): "ΔOV output side", ("ov", "right"): "ΔOV input side"}
FUNC_HALVES_FILE = "func_change_halves.npy"  # func_change, attn_jsd on random halves of the eval batches
_CIRCUIT_PAIRS = (("I_pre", "qk_rel"), ("I_pre", "ov_rel"), ("I_post", "qk_rel"), ("I_post", "ov_rel"))
CIRCUIT_UPDATE = Schema(
    "circuit_update", ("qk_rel", "ov_rel", "qk_srank", "ov_srank"), needs=("theta0", "theta1"),
    labels={"qk_rel": "relative QK-circuit update ||ΔQK||_F / ||QK(θ0)||_F",
            "ov_rel": "relative OV-circuit update ||ΔOV||_F / ||OV(θ0)||_F",
            "qk_srank": "stable rank of the QK-circuit update ΔQK",
            "ov_srank": "stable rank of the OV-circuit update ΔOV"},
    log_columns=("qk_rel", "ov_rel"), plasticity=("qk_rel", "ov_rel"), pairs=_CIRCUIT_PAIRS,
    settings=("amplification_r",),
    extra_files=(AMPLIFICATION_FILE, CIRCUIT_BASES_FILE, CIRCUIT_SUBSPACES_FILE), compare=_CIRCUIT_PAIRS,
    version=2,  # 2: the subspaces of ΔQK / ΔOV and the amplification at every r (by_r)
    section="Circuit updates: did the head's maps change? (ΔQK, ΔOV in residual-stream space, Elhage et al. "
            "2021; unchanged by a reparametrisation of the head that U counts as an update)",
    table=("qk_rel", "ov_rel"), required=False)

JOINT_LOSSES_FILE = "losses_joint_fwd.npy"
JOINT_EFFECT_FILE = "joint_effect.jsonl"
JOINT_EXAMPLES_FILE = "joint_examples.npy"  # the eval examples (indices) of losses_joint_fwd.npy's rows
UPDATE_JOINT = Schema(
    "update_joint", ("layer_joint_fwd",), needs=("theta0", "theta1", "eval"),
    labels={"layer_joint_fwd": "joint update effect of the head's layer: loss gain from every head of its layer "
                               "updated at once (nats; the same for each head of a layer)"},
    settings=("dtype", "extended_examples"), extra_files=(JOINT_LOSSES_FILE, JOINT_EFFECT_FILE, JOINT_EXAMPLES_FILE),
    required=False, version=2)  # 2: a fixed sample of --extended-examples eval examples

_FUNC_PAIRS = (("I_pre", "func_change"), ("I_post", "func_change"), ("U", "func_change"), ("I_pre", "attn_jsd"))
FUNC_CHANGE = Schema(
    "func_change", ("func_change", "attn_jsd"), needs=("theta0", "theta1", "eval"),
    labels={"func_change": "functional change 1 − CKA(head output under θ0, under θ1)",
            "attn_jsd": "attention-pattern change: mean JSD(θ0, θ1) over query tokens (nats)"},
    plasticity=("func_change", "attn_jsd"), pairs=_FUNC_PAIRS, settings=("dtype", "extended_examples"),
    extra_files=(FUNC_HALVES_FILE,), version=2,  # 2: a fixed sample of --extended-examples eval examples
    halves=FUNC_HALVES_FILE, compare=_FUNC_PAIRS,
    section="Functional change: did what the head computes change? (func_change = 1 − linear CKA of its output, "
            "attn_jsd = Jensen-Shannon divergence of its attention pattern, θ0 vs θ1 on the eval examples)",
    table=("func_change", "attn_jsd"), heatmap=("func_change",), required=False)

UPDATE_EFFECT_GROUP = Schema(
    "update_effect_group", ("group_effect_fwd", "group_effect_fwd_se", "group_effect_rev", "group_effect_rev_se"),
    needs=("theta0", "theta1", "eval"),
    labels={"group_effect_fwd": "update effect of the head's K/V group: loss gain from every Q/K/V/O update of "
                                "the group's heads at once (nats; the same for each head of a group)",
            "group_effect_rev": "reverse group effect: loss when the head's whole K/V group is reverted to θ0 (nats)"},
    settings=("dtype",), enabled=lambda cfg: cfg.kv_group_effect, split=True)

IMPORTANCE_GROUP = Schema(
    "importance_group", ("group_I_pre", "group_I_pre_se", "group_I_post", "group_I_post_se"),
    needs=("theta0", "theta1", "eval"),
    labels={"group_I_pre": "importance of the head's K/V group at θ0: loss increase when its query heads are "
                           "removed at once (nats; the same for each head of a group)",
            "group_I_post": "importance of the head's K/V group at θ1 (nats)"},
    settings=("ablation", "dtype"), enabled=lambda cfg: cfg.kv_group_effect, split=True)

# in the order of heads.csv's columns and of the measure step; the optional ones (importance
# under further ablations, the K/V group effect and importance) last: computed only when asked for
SCHEMAS: tuple[Schema, ...] = (IMPORTANCE_PRE, UPDATE, GRADFISHER, IMPORTANCE_POST, UPDATE_EFFECT, UPDATE_GEOMETRY,
                               CIRCUIT_UPDATE, UPDATE_JOINT, FUNC_CHANGE, *VARIANTS, UPDATE_EFFECT_GROUP,
                               IMPORTANCE_GROUP)


def named(items, name: str):
    """The one of `items` (schemas, or measurements: anything with a name) called `name`; an unknown
    name is an error listing the known ones."""
    by_name = {s.name: s for s in items}
    if name not in by_name:
        raise HeadplastError(f"unknown measurement '{name}'.{did_you_mean(name, by_name)}",
                             f"use one of {', '.join(by_name)}")
    return by_name[name]


def get(name: str) -> Schema:
    return named(SCHEMAS, name)


# what importance is asked to predict change beyond: the gradient at θ0 (how far the first steps
# push the head), the head's pretrained weight norm, and its layer (always controlled for)
BEYOND_GIVEN = ("grad_norm", "W0")


def plasticity_columns() -> tuple[str, ...]:
    return tuple(c for s in SCHEMAS for c in s.plasticity)


def stat_pairs() -> tuple[Pair, ...]:
    return tuple(p for s in SCHEMAS for p in s.pairs)


def labels() -> dict[str, str]:
    return {c: lab for s in SCHEMAS for c, lab in s.labels.items()}


def log_columns() -> frozenset[str]:
    return frozenset(c for s in SCHEMAS for c in s.log_columns)


def compare_pairs() -> tuple[Pair, ...]:
    """The pairs whose ρ a comparison reports for both runs and their difference."""
    return tuple(dict.fromkeys(p for s in SCHEMAS for p in s.compare))


def table_columns(shared: bool) -> tuple[str, ...]:
    """The report's heads-table columns of the shared measurements (theta0 only) or the others."""
    return tuple(c for s in SCHEMAS if s.shared == shared for c in s.table)


def heatmap_columns() -> tuple[str, ...]:
    return tuple(c for s in SCHEMAS for c in s.heatmap)


def rank_columns() -> tuple[str, ...]:
    """The heads.csv columns that can guide LoRA ranks (train --rank-by)."""
    return tuple(c for s in SCHEMAS for c in s.rank_by)


def of_column(column: str) -> Schema:
    """The schema that writes a heads.csv column."""
    found = [s for s in SCHEMAS if column in s.head_columns]
    if not found:
        raise HeadplastError(f"no measurement writes the column '{column}'", "use a heads.csv column")
    return found[0]
