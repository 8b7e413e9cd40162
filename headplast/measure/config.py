"""Configuration of the measure step (flags of `headplast measure` and `headplast pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from headplast.errors import HeadplastError, did_you_mean
from headplast.options import NONNEGATIVE, OPEN_FRACTION, POSITIVE, option, validate
from headplast.store.schema import ABLATIONS, SCHEMAS  # ABLATIONS: declared with the importance schemas

DTYPES = ("float32", "float16", "bfloat16")
SKIPPABLE = tuple(s.name for s in SCHEMAS if not s.required)  # added after runs existed: a run may lack them

# max_tokens and batch_size when not given, per device type (MeasureConfig.for_device). The CPU's
# were measured on 2 cores (4096 tokens: 1.2-1.4x faster than 16384). The GPU's are not measured
# on a GPU yet: a GPU is busy only with large passes, and 4096 tokens would replay one head per
# pass there; 65536 tokens hold a layer's 12 heads x 64 examples of up to 85 tokens in one pass
# (DeBERTa-v3-base in fp32: a few GiB of activations).
DEVICE_SIZES = {"cpu": {"max_tokens": 1 << 12, "batch_size": 32}, "gpu": {"max_tokens": 1 << 16, "batch_size": 64}}


@dataclass(frozen=True)
class MeasureConfig:
    eval_size: int | None = option(None, "examples in the eval subset (default: as recorded at training)", **POSITIVE)
    eval_source: str | None = option(None, "split of the eval subset (default: as recorded at training)",
                                     choices=("validation", "holdout", "train"))
    ablation: tuple[str, ...] = option(("zero",), "how a head is removed, comma-separated: zero (its output "
                                       "gated to 0), mean (its mean output), resample (its output on another eval "
                                       "example); the first gives I_pre/I_post, each further one its own files "
                                       "and columns, e.g. zero,mean,resample", sep=",", metavar="ABLATIONS")
    batch_size: int | None = option(None, "examples per ablation batch (default: from the device: 32 on a CPU, 64 "
                                    "on a GPU, not yet measured on one)", flag="--measure-batch-size",
                                    deprecated=("--batch-size",), **POSITIVE)
    grad_batch_size: int = option(16, "examples per batch of the gradient/Fisher pass", **POSITIVE)
    dtype: str = option("float32", "dtype of the forward passes (fp32 is what the tests prove exact)",
                        choices=DTYPES)
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda if available)")
    max_tokens: int | None = option(None, "tokens per ablation pass: heads of a layer are batched together up to "
                                    "this; the results do not depend on it (default: from the device: 4096 on a "
                                    "CPU, fastest on 2 cores for short SST-2 examples, 1.2-1.4x faster than 16384; "
                                    "65536 on a GPU, not yet measured on one: a GPU needs large passes, and 4096 "
                                    "would replay one head per pass; lower it if the GPU runs out of memory)",
                                    **POSITIVE)
    intruder_k: int = option(10, "intruder dimensions: top singular vectors of each fine-tuned matrix examined",
                             **POSITIVE)
    intruder_epsilon: float = option(0.5, "intruder dimensions: a vector whose largest |cosine| with theta0's "
                                     "singular vectors is below this is an intruder", **OPEN_FRACTION)
    amplification_r: int = option(8, "amplification factor (Hu et al. 2021, LoRA §7.3): top singular directions "
                                  "of each matrix's update it projects W0 on; at most the update's rank (a LoRA "
                                  "run of rank r < this uses r); set it to the LoRA rank compared", **POSITIVE)
    extended_examples: int = option(0, "eval examples the functional change and the joint update effect read: "
                                    "0, every one; n, a fixed seeded sample of n, the same for every run (for a "
                                    "large model: each is two or more forward passes per example; their split-half "
                                    "reliability and intervals say whether the sample is enough)", **NONNEGATIVE)
    kv_group_effect: bool = option(False, "also each K/V group as a whole (grouped-query decoders): its update "
                                   "effect (every Q/K/V/O update of the group's heads at once; group_effect_fwd/rev) "
                                   "and its importance (its query heads removed at once, θ0 and θ1; "
                                   "group_I_pre/post); a query head's row holds its group's; costs 1/G of the "
                                   "update effect and of importance for groups of G heads")
    skip: tuple[str, ...] = option((), "measurements not to compute this time, comma-separated, of those a run "
                                   f"may lack ({', '.join(SKIPPABLE)}); a later run without --skip adds them",
                                   sep=",",
                                   metavar="MEASUREMENTS")
    progress: bool = option(True, "progress bars")

    def __post_init__(self):
        validate(self)
        if isinstance(self.skip, str):
            object.__setattr__(self, "skip", tuple(a.strip() for a in self.skip.split(",") if a.strip()))
        for name in self.skip:
            if name not in SKIPPABLE:
                why = ("it is optional: computed only when its option asks for it"
                       if name in {s.name for s in SCHEMAS if s.optional}
                       else "every run has it" if name in {s.name for s in SCHEMAS}
                       else f"no such measurement.{did_you_mean(name, SKIPPABLE)}")
                raise HeadplastError(f"--skip {name}: {why}", f"skip only some of {', '.join(SKIPPABLE)}")
        if isinstance(self.ablation, str):  # MeasureConfig(ablation="mean") and old configs
            object.__setattr__(self, "ablation", tuple(a.strip() for a in self.ablation.split(",") if a.strip()))
        bad = [a for a in self.ablation if a not in ABLATIONS]
        if bad or not self.ablation or len(set(self.ablation)) < len(self.ablation):
            raise HeadplastError(f"--ablation {','.join(self.ablation)}: "
                                 + (f"unknown ablation '{bad[0]}'.{did_you_mean(bad[0], ABLATIONS)}" if bad
                                    else "each ablation at most once, at least one"),
                                 f"give some of {', '.join(ABLATIONS)}, comma-separated, e.g. --ablation zero,mean")

    def for_device(self, device) -> "MeasureConfig":
        """This config with max_tokens and batch_size not given taken from the device's type
        (DEVICE_SIZES); the measure step resolves them once, and records them."""
        sizes = DEVICE_SIZES["cpu" if str(device).startswith("cpu") else "gpu"]
        return replace(self, **{n: v for n, v in sizes.items() if getattr(self, n) is None})

    def settings(self, names) -> dict:
        """The values of the named fields (what a measurement's result depends on). 'ablation' is the
        first one, as a string: the main importance depends on it alone (and keeps the keys of runs
        measured before there were variants)."""
        return {n: self.ablation[0] if n == "ablation" else getattr(self, n) for n in names}


EXTENDED_SEED = 0


def extended_indices(n_total: int, n: int) -> np.ndarray:
    """The eval examples (indices, in the subset's order) the extended measures read: every one
    where n is 0 or at least n_total, else a sample of n drawn with a fixed seed, so that every run
    and seed of a task reads the same examples (its eval subset is shared)."""
    if n == 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(EXTENDED_SEED).permutation(n_total)[:n])
