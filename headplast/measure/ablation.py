"""Exact head-ablation importance without one full forward pass per head.

Per batch (length-sorted, padded to its own longest example, no autograd, eval mode):
  1. one unablated forward pass records every layer's input (hidden states and the
     layer's other arguments: masks, position biases, ...);
  2. for each layer l, the ablations of several heads of l run together as one
     batch of k copies, starting from the recorded input of layer l, so the layers
     below l are never recomputed.
The result is exactly what a full forward pass with the head gated would give. The loop over
batches and heads is headplast.measure.headloop's (shared with the update effect); this module
says what a unit changes (gates on O) and what is recorded (loss, logits, KL).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.data.metrics import metric_value, predictions
from headplast.data.tokenize import Encoded, sorted_batches
from headplast.measure.declare import Inputs, Measurement
from headplast.measure.fastpath import FAST_PATHS
from headplast.measure.gating import capture_o_inputs, head_gates
from headplast.measure.headloop import mean_se, sweep
from headplast.measure.replay import Replay
from headplast.measure.resample import derangement, replacements
from headplast.measure.results import GroupImportanceResult, ImportanceResult
from headplast.store import schema


def example_losses(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Per-example loss [B]: cross-entropy, or squared error for regression (fp32 or better)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if regression:
        return (logits[:, 0] - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


def kl_base_to(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_base || p) per example [B], in float64; rounding can still leave about -1e-17 where
    the two are equal, so it is clamped at 0 (KL is never negative)."""
    lp_base = F.log_softmax(base_logits.double(), -1)
    return (lp_base.exp() * (lp_base - F.log_softmax(logits.double(), -1))).sum(-1).clamp_min(0.0)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def head_means(model, adapter: ArchAdapter, enc: Encoded, pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Mean of each head's output (input of O) over all real tokens of the eval subset: [L, H*d]."""
    model.eval()
    device = next(model.parameters()).device
    total, count = None, 0
    for _, batch in sorted_batches(enc, batch_size, pad_id):
        batch = _to(batch, device)
        batch.pop("labels")
        mask = batch["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
        with capture_o_inputs(model, adapter) as store:
            model(**batch)
        sums = torch.stack([(store[l].float() * mask).sum((0, 1)) for l in sorted(store)])
        total = sums if total is None else total + sums
        count += mask.sum()
    return total / count


@torch.no_grad()
def ablation_importance(model, adapter: ArchAdapter, enc: Encoded, task, pad_id: int,
                        batch_size: int = 32, ablation: str = "zero", max_tokens: int = 1 << 14,
                        progress: bool = True, use_fast_path: bool = True, group_size: int = 1) -> ImportanceResult:
    """Importance of every head on the examples of `enc` (see module docstring). group_size G > 1:
    of every block of G consecutive heads removed at once (a K/V group's query heads), [L, H/G]."""
    model.eval()
    device = next(model.parameters()).device
    L, H = adapter.num_layers(model.config), adapter.num_heads(model.config)
    G = group_size
    if G < 1 or H % G:
        raise ValueError(f"{H} heads do not split into groups of {G}")
    means = head_means(model, adapter, enc, pad_id, batch_size) if ablation == "mean" else None
    donors = derangement(len(enc)) if ablation == "resample" else None
    regression = task.is_regression

    def per_batch(rp: Replay, idx, labels):
        B, T = rp.mask.shape
        # resample: per batch, the donors' outputs on these examples' positions
        targets = means if donors is None else replacements(model, adapter, enc, donors[idx], T, pad_id, idx)

        def score(lg):  # [B, C] -> loss [B], logits [B, C], KL from the unablated model [B]
            row = (example_losses(lg, labels, regression).double(), lg.float())
            return row if regression else (*row, kl_base_to(rp.logits, lg).double())

        def hooks(l, units):  # copy j: head (or group of G heads) units[j] of layer l gated
            gates = torch.ones(len(units) * B, H, device=device)  # [k*B, H]
            for j, u in enumerate(units):
                gates[j * B:(j + 1) * B, u * G:(u + 1) * G] = 0.0
            return head_gates(model, adapter, {l: gates}, targets, rp.o_rows)
        return score, hooks

    fast = FAST_PATHS.get(adapter.model_type) if use_fast_path else None
    losses, logits_all, *kl = sweep(model, adapter, enc, pad_id, batch_size, max_tokens, per_batch, fast,
                                    f"ablation ({ablation})" if G == 1 else f"group ablation ({ablation})",
                                    progress, "during ablation", units_per_layer=H // G)
    # column 0 of KL is the unablated model's own (0); regression has none
    kl = np.ascontiguousarray(kl[0][:, 1:]) if kl else np.zeros((len(enc), L * H // G))
    return summarize(losses, logits_all, kl, enc.labels, task, ablation, L, H // G)


def summarize(losses, logits_all, kl, labels, task, ablation, L, H) -> ImportanceResult:
    """Per-head means, paired standard errors and metric changes from per-example results
    (losses [N, 1+L*H], logits [N, 1+L*H, C], kl [N, L*H]; column 0 the unablated model)."""
    importance, se = mean_se(losses[:, 1:] - losses[:, :1], L, H)  # paired differences
    base_metric = metric_value(task.metric, predictions(task, logits_all[:, 0]), labels)
    mdelta = np.array([metric_value(task.metric, predictions(task, logits_all[:, c]), labels)
                       for c in range(1, 1 + L * H)]) - base_metric
    kl_mean = np.full(L * H, np.nan) if task.is_regression else kl.mean(0)
    shape = (L, H)
    return ImportanceResult(importance, se, mdelta.reshape(shape), kl_mean.reshape(shape),
                            losses.astype(np.float32), float(losses[:, 0].mean()), float(base_metric),
                            task.metric, ablation)


def _importance(x: Inputs, which: str, ablation: str | None = None) -> ImportanceResult:
    model, c = x.model(which), x.cfg
    return ablation_importance(model, get_adapter(model), x.enc, x.task, x.pad_id, c.batch_size,
                               ablation or c.ablation[0], c.max_tokens, c.progress)


# what each measures is declared in headplast.store.schema; here only how it is computed
IMPORTANCE_PRE = Measurement.of(schema.IMPORTANCE_PRE, ImportanceResult, lambda x: _importance(x, "theta0"))
IMPORTANCE_POST = Measurement.of(schema.IMPORTANCE_POST, ImportanceResult, lambda x: _importance(x, "theta1"))
VARIANTS = tuple(Measurement.of(s, ImportanceResult,
                                lambda x, s=s: _importance(x, s.needs[0], s.name.rsplit("_", 1)[1]))
                 for s in schema.VARIANTS)

def group_importance(theta0, theta1, adapter: ArchAdapter, enc: Encoded, task, pad_id: int, batch_size: int = 32,
                     ablation: str = "zero", max_tokens: int = 1 << 14, progress: bool = True) -> GroupImportanceResult:
    """Importance of each K/V group (its G query heads removed at once) before and after fine-tuning,
    one row per query head holding its group's value; without grouped-query attention, importance."""
    G = adapter.group_size(theta0.config)
    res = [ablation_importance(m, adapter, enc, task, pad_id, batch_size, ablation, max_tokens, progress, group_size=G)
           for m in (theta0, theta1)]
    return GroupImportanceResult(*(np.repeat(x, G, axis=1) for r in res for x in (r.importance, r.importance_se)))


def _compute_group(x: Inputs) -> GroupImportanceResult:
    m0, m1, c = x.model("theta0"), x.model("theta1"), x.cfg
    return group_importance(m0, m1, get_adapter(m0), x.enc, x.task, x.pad_id, c.batch_size, c.ablation[0],
                            c.max_tokens, c.progress)


IMPORTANCE_GROUP = Measurement.of(schema.IMPORTANCE_GROUP, GroupImportanceResult, _compute_group)
