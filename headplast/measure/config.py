"""Configuration of the measure step (flags of `headplast measure` and `headplast pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass

from headplast.options import POSITIVE, option, validate

DTYPES = ("float32", "float16", "bfloat16")
ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class MeasureConfig:
    eval_size: int | None = option(None, "examples in the eval subset (default: as recorded at training)", **POSITIVE)
    eval_source: str | None = option(None, "split of the eval subset (default: as recorded at training)",
                                     choices=("validation", "holdout", "train"))
    ablation: str = option("zero", "zero: gate the head to 0; mean: replace it by its mean output",
                           choices=ABLATIONS)
    batch_size: int = option(32, "examples per ablation batch", flag="--measure-batch-size",
                             aliases=("--batch-size",), **POSITIVE)
    grad_batch_size: int = option(16, "examples per batch of the gradient/Fisher pass", **POSITIVE)
    dtype: str = option("float32", "dtype of the forward passes (fp32 is what the tests prove exact)",
                        choices=DTYPES)
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda if available)")
    max_tokens: int = option(1 << 12, "tokens per ablation pass (heads of a layer are batched together; 4096 was "
                             "fastest on 2 CPU cores for short SST-2 examples, 1.2-1.4x faster than 16384)", **POSITIVE)
    progress: bool = option(True, "progress bars")

    def __post_init__(self):
        validate(self)

    def settings(self, names) -> dict:
        """The values of the named fields (what a measurement's result depends on)."""
        return {n: getattr(self, n) for n in names}
