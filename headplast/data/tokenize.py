"""Tokenisation and batching with dynamic padding (each batch padded to its longest example)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headplast.data.loaders import Examples


@dataclass
class Encoded:
    """Tokenised examples, unpadded; features[i] is a dict of 1-D int lists."""

    features: list[dict]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    def lengths(self) -> np.ndarray:
        return np.asarray([len(f["input_ids"]) for f in self.features])

    def take(self, idx) -> "Encoded":
        """The examples at `idx` (in that order)."""
        return Encoded([self.features[int(i)] for i in idx], np.asarray(self.labels)[np.asarray(idx, dtype=int)])


def encode(tokenizer, examples: Examples, max_length: int = 256) -> Encoded:
    cols = list(zip(*examples.texts)) if len(examples) else [[]]
    if len(cols) == 1:
        enc = tokenizer(list(cols[0]), truncation=True, max_length=max_length)
    else:
        enc = tokenizer(list(cols[0]), list(cols[1]), truncation="longest_first", max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    feats = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
    return Encoded(feats, examples.labels)


def as_hf_dataset(enc: Encoded):
    """A datasets.Dataset with a 'labels' column, for transformers' Trainer."""
    import datasets

    cols = {k: [f[k] for f in enc.features] for k in enc.features[0]}
    cols["labels"] = enc.labels.tolist()
    return datasets.Dataset.from_dict(cols)


def collate(features: list[dict], pad_id: int, labels=None) -> dict:
    """Pad a list of features to the longest one. Returns a dict of tensors [B, T]."""
    T = max(len(f["input_ids"]) for f in features)
    out = {}
    for k in features[0]:
        fill = pad_id if k == "input_ids" else 0
        out[k] = torch.tensor([f[k] + [fill] * (T - len(f[k])) for f in features], dtype=torch.long)
    if labels is not None:
        out["labels"] = torch.as_tensor(np.asarray(labels))
    return out


def sorted_batches(enc: Encoded, batch_size: int, pad_id: int):
    """Yield (indices, batch) sorted by length so each batch carries little padding.

    The indices map batch rows back to positions in `enc`.
    """
    order = np.argsort(-enc.lengths(), kind="stable")
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        yield idx, collate([enc.features[i] for i in idx], pad_id, enc.labels[idx])


def padded_batches(enc: Encoded, batch_size: int, pad_id: int, pad_to: int):
    """Yield (indices, batch) in order, every batch padded to `pad_to` tokens (the naive way)."""
    for s in range(0, len(enc), batch_size):
        idx = np.arange(s, min(s + batch_size, len(enc)))
        feats = [dict(enc.features[i]) for i in idx]
        feats[0] = {k: v + [pad_id if k == "input_ids" else 0] * (pad_to - len(v)) for k, v in feats[0].items()}
        yield idx, collate(feats, pad_id, enc.labels[idx])
