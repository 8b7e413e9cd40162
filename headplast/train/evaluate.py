"""Validation metric of a model (length-sorted batches, no autograd, dropout off)."""

from __future__ import annotations

import numpy as np
import torch

from headplast.data.tokenize import encode, sorted_batches
from headplast.data.metrics import compute_metrics


@torch.no_grad()
def predict_logits(model, tokenizer, examples, max_length=256, batch_size=64) -> np.ndarray:
    was_training = model.training
    model.eval()
    enc = encode(tokenizer, examples, max_length)
    out = None
    device = next(model.parameters()).device
    for idx, batch in sorted_batches(enc, batch_size, tokenizer.pad_token_id):
        batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(enc), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    model.train(was_training)
    return out


def evaluate(model, task, tokenizer, examples, max_length=256, batch_size=64) -> dict:
    logits = predict_logits(model, tokenizer, examples, max_length, batch_size)
    return compute_metrics(task, logits, examples.labels)
