"""Configuration of the measure step (flags of `headplast measure` and `headplast pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass

from headplast.errors import HeadplastError, did_you_mean
from headplast.options import OPEN_FRACTION, POSITIVE, option, validate

DTYPES = ("float32", "float16", "bfloat16")
ABLATIONS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class MeasureConfig:
    eval_size: int | None = option(None, "examples in the eval subset (default: as recorded at training)", **POSITIVE)
    eval_source: str | None = option(None, "split of the eval subset (default: as recorded at training)",
                                     choices=("validation", "holdout", "train"))
    ablation: tuple[str, ...] = option(("zero",), "how a head is removed, comma-separated: zero (its output "
                                       "gated to 0), mean (its mean output), resample (its output on another eval "
                                       "example); the first gives I_pre/I_post, each further one its own files "
                                       "and columns, e.g. zero,mean,resample", sep=",", metavar="ABLATIONS")
    batch_size: int = option(32, "examples per ablation batch", flag="--measure-batch-size",
                             aliases=("--batch-size",), **POSITIVE)
    grad_batch_size: int = option(16, "examples per batch of the gradient/Fisher pass", **POSITIVE)
    dtype: str = option("float32", "dtype of the forward passes (fp32 is what the tests prove exact)",
                        choices=DTYPES)
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda if available)")
    max_tokens: int = option(1 << 12, "tokens per ablation pass (heads of a layer are batched together; 4096 was "
                             "fastest on 2 CPU cores for short SST-2 examples, 1.2-1.4x faster than 16384)", **POSITIVE)
    intruder_k: int = option(10, "intruder dimensions: top singular vectors of each fine-tuned matrix examined",
                             **POSITIVE)
    intruder_epsilon: float = option(0.5, "intruder dimensions: a vector whose largest |cosine| with theta0's "
                                     "singular vectors is below this is an intruder", **OPEN_FRACTION)
    progress: bool = option(True, "progress bars")

    def __post_init__(self):
        validate(self)
        if isinstance(self.ablation, str):  # MeasureConfig(ablation="mean") and old configs
            object.__setattr__(self, "ablation", tuple(a.strip() for a in self.ablation.split(",") if a.strip()))
        bad = [a for a in self.ablation if a not in ABLATIONS]
        if bad or not self.ablation or len(set(self.ablation)) < len(self.ablation):
            raise HeadplastError(f"--ablation {','.join(self.ablation)}: "
                                 + (f"unknown ablation '{bad[0]}'.{did_you_mean(bad[0], ABLATIONS)}" if bad
                                    else "each ablation at most once, at least one"),
                                 f"give some of {', '.join(ABLATIONS)}, comma-separated, e.g. --ablation zero,mean")

    def settings(self, names) -> dict:
        """The values of the named fields (what a measurement's result depends on). 'ablation' is the
        first one, as a string: the main importance depends on it alone (and keeps the keys of runs
        measured before there were variants)."""
        return {n: self.ablation[0] if n == "ablation" else getattr(self, n) for n in names}
