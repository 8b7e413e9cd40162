"""Fine-tuning with transformers' Trainer: FFT or LoRA from theta0 (no files of ours).

The caller owns where things are written; this module only turns theta0 and the training
examples into theta1.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext

import numpy as np
import torch

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.train.config import TrainConfig
from headplast.train.lora import adapted_modules, make_lora_model, resolve_targets
from headplast.train.recipes import ALPHA_PER_RANK
from headplast.train.speed import (clip_in_step, embedding_rows_in_use, frozen_linears_in, last_layer_token0,
                                   numpy_dropout, resolve_speed, steady_steps, torch_optimizer, training_device,
                                   tune_allocator)


class NonFiniteLoss(RuntimeError):
    pass


CHECK_EVERY = 32  # steps between looks at the loss on a GPU (each look waits for the GPU)


def _look(loss: torch.Tensor, step: int) -> bool:
    """Whether to look at the non-finite flag now: a host round trip, so every step on a CPU
    (free there) and every CHECK_EVERY steps on a GPU."""
    return loss.device.type == "cpu" or step % CHECK_EVERY == 0


def trainable_model(model, adapter: ArchAdapter, cfg: TrainConfig, ranks: dict[str, int] | None = None):
    """The model to train and a description of what is adapted: every parameter (FFT), or
    LoRA on exactly the resolved target modules (with the task head trained in full), of rank
    cfg.lora_r or `ranks[module]`."""
    from transformers import set_seed

    if cfg.method == "lora":
        targets = resolve_targets(adapter, model, cfg.lora_targets)
        # LoRA's A matrices are drawn at random: seed them from the run (this torch seeds every
        # process differently, and Trainer only seeds when it is built, after this)
        set_seed(cfg.seed)
        # unset alpha: the recipe's rule (the train step fills it in and records it; direct callers get the same)
        alpha = ALPHA_PER_RANK * cfg.lora_r if cfg.lora_alpha is None else cfg.lora_alpha
        model = make_lora_model(model, adapter, cfg.lora_r, alpha, cfg.lora_dropout, targets, ranks)
        return model, adapted_modules(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, "all parameters (full fine-tuning)"


def _one_device_arguments():
    from transformers import TrainingArguments

    class OneDeviceArguments(TrainingArguments):
        """Trainer's arguments with at most one GPU: with several visible, Trainer would wrap the
        model in DataParallel and train with batch_size x GPUs while run_config.json says batch_size.
        n_gpu is public; Trainer reads it for the wrapping, the batch size and the loss scaling."""

        @property
        def n_gpu(self):
            return min(super().n_gpu, 1)

    return OneDeviceArguments


def training_args(cfg: TrainConfig, tmp: str, run_name: str | None = None):
    """Trainer's arguments for a resolved config (device and speed settings filled): one device,
    the first visible GPU or the CPU."""
    cuda = training_device(cfg.device).type == "cuda"
    return _one_device_arguments()(
        output_dir=tmp, num_train_epochs=cfg.num_epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed, save_strategy="no",
        eval_strategy="no", logging_strategy="epoch", use_cpu=not cuda, run_name=run_name,
        # tensorboard: our own callback writes where the caller says (transformers would use tmp)
        report_to=[cfg.report_to] if cfg.report_to in ("wandb", "mlflow") else "none",
        dataloader_pin_memory=cuda, disable_tqdm=False, bf16=cfg.train_dtype == "bfloat16",
        # Trainer's filter reads every step's loss on the host (a GPU sync per step); GuardedTrainer
        # stops at a non-finite loss instead
        logging_nan_inf_filter=False,
        # batches of similar length: dynamic padding then wastes little compute (big win on CPU)
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")


def _make_trainer(model, args, ds, tok, callbacks=(), fused_clip: bool = False, lean: bool = False):
    from transformers import DataCollatorWithPadding, Trainer

    class GuardedTrainer(Trainer):
        """Stops at the first non-finite loss instead of training on garbage; with fused_clip,
        gradients are clipped inside the fused AdamW step (speed.clip_in_step). With lean, what
        Trainer would list again at every step by walking the model (the trained parameters,
        the parameter count of its FLOP estimate) is listed once: the same values."""

        _trained: list | None = None
        _counted: int | None = None

        def _clip_grad_norm(self, model):
            norm = None
            if fused_clip and _whole_parameters(self):
                if self._trained is None or not lean:
                    self._trained = [p for p in model.parameters() if p.requires_grad]
                norm = clip_in_step(torch_optimizer(self.optimizer), self._trained, self.args.max_grad_norm)
            return super()._clip_grad_norm(model) if norm is None else norm

        def floating_point_ops(self, inputs):
            main = getattr(self.model, "main_input_name", "input_ids")
            if not lean or main not in inputs or not hasattr(self.model, "num_parameters"):
                return super().floating_point_ops(inputs)
            if self._counted is None:  # Trainer's own estimate, 6 * tokens * non-embedding parameters
                self._counted = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs[main].numel() * self._counted

        _nonfinite = None  # on the device: a non-finite loss since the last look

        def compute_loss(self, model, inputs, *a, **kw):
            loss = super().compute_loss(model, inputs, *a, **kw)
            value = (loss[0] if isinstance(loss, tuple) else loss).detach()
            bad = ~torch.isfinite(value).all()
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
            if _look(value, self.state.global_step):
                self.check_finite(value)
            return loss

        def check_finite(self, value=None):
            if self._nonfinite is not None and bool(self._nonfinite):
                if value is not None and value.device.type == "cpu":
                    raise NonFiniteLoss(f"loss became {value.item()} at step {self.state.global_step}")
                raise NonFiniteLoss(f"the loss became non-finite at or before step {self.state.global_step} "
                                    f"(looked at every {CHECK_EVERY} steps on a GPU)")

    return GuardedTrainer(model=model, args=args, train_dataset=ds, callbacks=list(callbacks),
                          data_collator=DataCollatorWithPadding(tok), processing_class=tok)


def _decay_recorder(rows):
    """A callback handing each optimizer step to rows.record_step (speed.UsedRows)."""
    from transformers import TrainerCallback

    class RecordDecay(TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            rows.record_step(optimizer)

    return RecordDecay()


def _whole_parameters(trainer) -> bool:
    """Whether each process holds whole parameters and gradients (not sharded by DeepSpeed or FSDP)."""
    return not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)


def _torch_adamw(trainer) -> bool:
    """Whether training steps with torch's AdamW on whole parameters."""
    return trainer.args.optim in ("adamw_torch", "adamw_torch_fused") and _whole_parameters(trainer)


def _token_ids(enc, tok) -> torch.Tensor:
    """Every token id a training batch can hold: the examples' and the padding's."""
    ids = [f["input_ids"] for f in enc.features] + [[tok.pad_token_id]]
    return torch.as_tensor(np.concatenate(ids), dtype=torch.long)


def fine_tune(model, tok, train_examples, cfg: TrainConfig, log_dir: str | None = None, run_name: str | None = None):
    """Train `model` in place on the examples; returns Trainer's TrainOutput. Raises NonFiniteLoss.
    With cfg.report_to set, training is logged there (tensorboard: event files in log_dir)."""
    from headplast.data.tokenize import as_hf_dataset, encode

    if cfg.device is None or None in cfg.speed().values():  # a library caller's config: this device's defaults
        cfg = resolve_speed(cfg)[0]
    enc = encode(tok, train_examples, cfg.max_length)
    ds = as_hf_dataset(enc)
    callbacks = []
    if cfg.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=log_dir)))  # closed by it at the end
    if cfg.tune_allocator:
        tune_allocator()
    masks = numpy_dropout(model, cfg.seed) if cfg.dropout_masks == "numpy" else nullcontext()
    bf16 = cfg.train_dtype == "bfloat16"
    token0 = last_layer_token0(model, get_adapter(model)) if cfg.last_layer_token0 else nullcontext()
    with tempfile.TemporaryDirectory() as tmp, masks, token0:
        # fused clipping rounds the clip factor once more, and the used embedding rows leave the
        # zeros out of the clipping norm: runs trained without them keep their results
        trainer = _make_trainer(model, training_args(cfg, tmp, run_name), ds, tok, callbacks,
                                fused_clip=bool(cfg.fused_clip), lean=bool(cfg.lean_steps))
        # entered once Trainer has put the model on its device, so what the blocks keep is where the model is
        frozen = frozen_linears_in(model, torch.bfloat16) if cfg.frozen_bf16 and bf16 else nullcontext()
        used = embedding_rows_in_use(model, _token_ids(enc, tok)) if cfg.embedding_rows and _torch_adamw(trainer) \
            else nullcontext()
        with frozen, used as rows:  # the optimizer is built in train(), from the model as it is then
            if rows is not None:
                trainer.add_callback(_decay_recorder(rows))
            with steady_steps(model) if cfg.lean_steps else nullcontext():  # after the rows' swap
                result = trainer.train()
            trainer.check_finite()  # the steps since the last look
    model.eval()
    return result
