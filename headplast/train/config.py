"""Configuration of the train step: every value used is recorded in run_config.json.

Each field is also a flag of `headplast train` and `headplast pipeline` (same name with
dashes, same default), declared here once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from headplast.data.tasks import DEFAULT_TASK
from headplast.errors import HeadplastError
from headplast.options import FRACTION, NONNEGATIVE, POSITIVE, option, validate
from headplast.train.lora import RANK_BY
from headplast.train.speed import DEVICES, DROPOUT_MASKS, SPEED, TRAIN_DTYPES

# Unset fields (None) are filled per task by train/recipes.py (the default experiment's values
# for SST-2, the guide's for every other task) when a run starts; run_config.json records which.
METHODS = ("fft", "lora")
TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
# what training did before these fields existed: runs with these values keep their keys
LEGACY = {"train_dtype": "float32", "dropout_masks": "torch", "last_layer_token0": False}
# before they had flags of their own, fused clipping and the embedding's used rows came with bfloat16
IMPLIED_BY_BF16 = ("fused_clip", "embedding_rows")
# how fast or where, not what is trained: not part of a run's identity (frozen_bf16: the same products)
NOT_IDENTITY = ("output_root", "force", "report_to", "tune_allocator", "lean_steps", "frozen_bf16", "device")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


@dataclass(frozen=True)
class TrainConfig:
    task: str = option(DEFAULT_TASK, "GLUE task (any case, dash optional) or a name for custom data")
    method: str = option("fft", "fft (every parameter) or lora", choices=METHODS)
    seed: int = option(1, "seed of theta0's task head, LoRA's init, data order and dropout", **NONNEGATIVE)
    model: str | None = option(None, "hub id or local directory (default: the embedded MiniLM-L6)")
    output_root: str = option("outputs", "root under which runs are written")
    data_dir: str | None = option(None, "GLUE-format folder: DIR/<TASK>/train.tsv, dev.tsv")
    data_source: str = option("auto", "where to look for GLUE data", choices=("auto", "local", "bundled", "hub"))
    # custom data (CSV/TSV/JSONL) instead of a GLUE task; --task then only names it
    train_file: str | None = option(None, "custom CSV/TSV/JSONL training file")
    validation_file: str | None = option(None, "custom validation file (same columns)")
    text_columns: tuple[str, ...] = option(("sentence1", "sentence2"), "custom files: 1 or 2 text columns",
                                           sep=",")
    label_column: str = option("label", "custom files: the label column")
    # LoRA
    lora_r: int = option(8, "LoRA rank r", **POSITIVE)
    lora_alpha: float | None = option(None, "LoRA scale alpha (default: 2 * --lora-r, the guide's rule: 16 at r 8)",
                                      **POSITIVE)
    lora_dropout: float = option(0.1, "dropout on LoRA's input", **FRACTION)
    lora_targets: str = option("attn", "attn (Q,K,V,O; default), attn,ffn, q,v, or full module names")
    rank_by: str = option("uniform", "LoRA ranks per module: uniform (--lora-r everywhere), or guided by a head score "
                          "of the --rank-from run (I_pre, U, effect_fwd) with exactly the LoRA parameters of "
                          "uniform --lora-r", choices=RANK_BY)
    rank_from: str | None = option(None, "a trained and measured run whose heads' scores guide --rank-by")
    # theta0
    head_init: str = option("probe", "probe: fit the task head on the frozen encoder first; random: keep "
                            "the untrained head", choices=("probe", "random"))
    probe_epochs: int = option(300, "max full-batch steps of the probe (early-stopped on 10%% held out)", **POSITIVE)
    probe_lr: float = option(1e-3, "learning rate of the probe", **POSITIVE)
    # optimisation
    num_epochs: float | None = option(None, "training epochs (default: SST-2 1, other tasks 3)", **POSITIVE)
    batch_size: int = option(32, "training batch size (the measurement's is --measure-batch-size)",
                             flag="--train-batch-size", deprecated=("--batch-size",), **POSITIVE)
    learning_rate: float | None = option(None, "default: 2e-5 (FFT), 2e-3 (LoRA)", **POSITIVE)
    weight_decay: float = option(0.01, "AdamW weight decay", **NONNEGATIVE)
    warmup_ratio: float = option(0.06, "fraction of steps with linear warm-up", **FRACTION)
    max_length: int = option(256, "tokens per example (longer ones are truncated)", **POSITIVE)
    group_by_length: bool = option(True, "batches of similar length (little padding)")
    device: str | None = option(None, "where to train: cpu or cuda (default: cuda if a GPU is visible). A run uses "
                                "one GPU, the first visible one: choose it with CUDA_VISIBLE_DEVICES; several runs "
                                "at once on several GPUs: headplast sweep", choices=DEVICES)
    # training speed: each trick has its own flag; unset (None) = the device's default (speed.resolve_speed),
    # resolved once when the run is first trained and recorded in run_config.json under "speed"
    train_dtype: str | None = option(None, "dtype of training's matrix products: bfloat16 (autocast; weights, "
                                     "gradients and AdamW stay float32) or float32. Default: bfloat16 where the "
                                     "device computes it natively (CPUs with AMX or AVX512-BF16, GPUs since "
                                     "Ampere; not emulated), else float32", choices=TRAIN_DTYPES)
    dropout_masks: str | None = option(None, "generator of dropout masks in training: numpy (SFC64, about 10x "
                                       "faster per mask on CPU; drawn on the host, so refused on a GPU) or torch. "
                                       "Default: numpy on CPU, torch on GPU", choices=DROPOUT_MASKS)
    last_layer_token0: bool | None = option(None, "train with the last layer's O, FFN and norms computed for token 0 "
                                            "only, the one the task head reads: the same logits and gradients for "
                                            "less work (dropout masks there are drawn for token 0 only). Default: on "
                                            "on CPU (measured there), off on GPU (not measured there)")
    lean_steps: bool | None = option(None, "list the model's parameters and switch its mode once, not at every step "
                                     "as Trainer does (a walk over every module each time): results unchanged. "
                                     "Default: on on CPU, off on GPU")
    tune_allocator: bool | None = option(None, "keep freed memory for reuse (glibc): no page faults per step, "
                                         "results unchanged. Default: on on CPU, off on GPU")
    fused_clip: bool | None = option(None, "clip gradients inside fused AdamW's step (one BLAS norm in float64, no "
                                     "rescaling pass; the clip factor is rounded once more). Default: on on CPU "
                                     "with bfloat16, else off")
    embedding_rows: bool | None = option(None, "full fine-tuning trains only the embedding rows the training data "
                                         "looks up (the other rows get AdamW's weight decay, bit for bit). Default: "
                                         "on on CPU with bfloat16, else off; refused on GPU (millions of tiny "
                                         "kernels, and not bit-exact against CUDA's fused AdamW)")
    frozen_bf16: bool | None = option(None, "hold LoRA's frozen Linear weights in bfloat16 while training under "
                                      "bfloat16 autocast (the same products, no cast per call). Default: on on CPU "
                                      "with bfloat16, else off")
    max_train_samples: int | None = option(None, "train on a fixed random subset of this size (default: SST-2 "
                                           "8000, other tasks all; a value >= the split's size means all)", **POSITIVE)
    train_subset_seed: int = option(0, "seed of that subset (fixed: seeds vary the optimisation, not the data)",
                                    **NONNEGATIVE)
    # eval subset (a holdout subset must be kept out of training)
    eval_source: str | None = option(None, "split the eval subset is drawn from (default: SST-2 holdout, other "
                                     "tasks validation)", choices=("validation", "holdout", "train"))
    eval_size: int | None = option(None, "examples in the eval subset (default: SST-2 6000, other tasks 1024)",
                                   **POSITIVE)
    report_to: str = option("none", "experiment tracker of training and of each run's headline measurements: "
                            "tensorboard (event files in the run's tensorboard/), wandb, mlflow (configured by "
                            "their environment variables), none", choices=TRACKERS)
    force: bool = option(False, "redo even if the outputs exist and are up to date")

    def __post_init__(self):
        validate(self)
        if bool(self.train_file) != bool(self.validation_file):
            given, missing = ("--train-file", "--validation-file") if self.train_file else \
                ("--validation-file", "--train-file")
            raise HeadplastError(f"{given} was given without {missing}: custom data needs both files",
                                 f"pass {missing} too (e.g. a held-out part of your data, same columns)")
        if self.guided and self.method != "lora":
            raise HeadplastError(f"--rank-by {self.rank_by} sets LoRA ranks: it needs --method lora",
                                 "pass --method lora, or leave --rank-by at uniform")

    @property
    def guided(self) -> bool:
        """LoRA ranks set per module from another run's head scores."""
        return self.rank_by != "uniform"

    @property
    def lr(self) -> float:
        if self.learning_rate is None:
            raise ValueError("learning_rate is unset: resolve the config first (train.recipes.resolve)")
        return self.learning_rate

    def to_dict(self) -> dict:
        d = asdict(self)
        d["text_columns"] = list(self.text_columns)
        return d

    def speed(self) -> dict:
        """The training speed settings (resolved: no None once speed.resolve_speed filled them)."""
        return {k: getattr(self, k) for k in SPEED}

    def theta0_key_fields(self) -> dict:
        """What determines theta0: runs that agree on these share theta0 bit for bit."""
        keys = ("task", "seed", "head_init", "probe_epochs", "probe_lr", "max_length",
                "max_train_samples", "train_subset_seed", "eval_source", "eval_size", "data_dir",
                "data_source", "train_file", "validation_file", "text_columns", "label_column")
        return {k: getattr(self, k) for k in keys}

    def run_fields(self) -> dict:
        """What makes a run different from another (used to refuse overwriting)."""
        d = self.to_dict()
        for k in NOT_IDENTITY:
            d.pop(k)
        for k in IMPLIED_BY_BF16:  # as bfloat16 implied them before their flags: keyed as before
            if d[k] == (d["train_dtype"] == "bfloat16"):
                d.pop(k)
        for k, legacy in LEGACY.items():  # runs trained before the field existed keep their identity
            if d[k] == legacy:
                d.pop(k)
        if not self.guided:  # uniform ranks: keyed as before guided ranks existed, --rank-from unused
            d.pop("rank_by"), d.pop("rank_from")
        return d
