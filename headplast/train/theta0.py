"""theta0: the pretrained encoder plus a task head, built deterministically from the seed.

With head_init='probe' the task head (and pooler) is fitted on the frozen encoder first,
so importance before fine-tuning is not measured through a random classifier.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.data.tokenize import encode, sorted_batches
from headplast.train.metrics import compute_metrics


def build_theta0(model_path: str, task, tokenizer, train, seed: int, head_init: str,
                 max_length: int, probe_epochs: int, probe_lr: float):
    from headplast.arch.loading import load_model

    torch.manual_seed(seed)  # the fresh head's init depends only on the seed
    problem = "regression" if task.is_regression else "single_label_classification"
    model = load_model(model_path, num_labels=task.num_labels, problem_type=problem)
    adapter = get_adapter(model)
    if head_init == "probe":
        fit_probe(model, adapter, tokenizer, train, task, seed, max_length, probe_epochs, probe_lr)
    elif head_init != "random":
        from headplast.errors import HeadplastError
        raise HeadplastError(f"unknown --head-init '{head_init}'", "use probe or random")
    model.eval()
    return model


@torch.no_grad()
def first_token_features(model, adapter: ArchAdapter, enc, pad_id: int, batch_size: int = 64):
    """Last-layer hidden state of token 0 for each example: [N, D] (all the head reads)."""
    model.eval()
    base = getattr(model, adapter.base)
    feats = torch.zeros(len(enc), model.config.hidden_size if hasattr(model.config, "hidden_size")
                        else model.config.dim)
    for idx, batch in sorted_batches(enc, batch_size, pad_id):
        batch.pop("labels")
        out = base(**batch).last_hidden_state
        feats[torch.as_tensor(idx)] = out[:, 0]
    return feats


def fit_probe(model, adapter, tokenizer, train, task, seed, max_length, epochs, lr):
    """Full-batch AdamW on the head modules over cached features (the encoder is frozen)."""
    enc = encode(tokenizer, train, max_length)
    feats = first_token_features(model, adapter, enc, tokenizer.pad_token_id).unsqueeze(1)  # [N,1,D]
    labels = torch.as_tensor(train.labels)
    params = [p for name in adapter.head_modules for p in _module(model, name).parameters()]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.eval()  # dropout off: the probe is deterministic
    for _ in range(epochs):
        logits = adapter.logits(model, feats)
        loss = F.mse_loss(logits[:, 0], labels.float()) if task.is_regression else F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.random.set_rng_state(gen_state)
    with torch.no_grad():
        return compute_metrics(task, adapter.logits(model, feats).numpy(), train.labels)


def _module(model, name):
    return model.get_submodule(name)
