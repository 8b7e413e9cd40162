"""theta0: the pretrained encoder plus a task head, built deterministically from the seed.

With head_init='probe' the task head (and pooler) is fitted on the frozen encoder first,
so importance before fine-tuning is not measured through a random classifier.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from headplast.arch.adapters import ArchAdapter, get_adapter
from headplast.data.tokenize import encode, sorted_batches


def build_theta0(model_path: str, task, tokenizer, train, seed: int, head_init: str,
                 max_length: int, probe_epochs: int, probe_lr: float, device: torch.device | str = "cpu"):
    """theta0 on `device` (fp32; the caller decides the matmul precision: steps use exact fp32)."""
    from headplast.arch.loading import load_model

    torch.manual_seed(seed)  # the fresh head's init depends only on the seed (drawn on the CPU at load)
    problem = "regression" if task.is_regression else "single_label_classification"
    model = load_model(model_path, num_labels=task.num_labels, problem_type=problem).to(device)
    adapter = get_adapter(model)
    if adapter.reads_last and model.config.pad_token_id != tokenizer.pad_token_id:
        # decoders' classifiers find each example's last token by the pad id: it must be the one the
        # batches are padded with (the tokenizer's; from EOS where it had none)
        model.config.pad_token_id = tokenizer.pad_token_id
    probe = None
    if head_init == "probe":
        probe = fit_probe(model, adapter, tokenizer, train, task, seed, max_length, probe_epochs, probe_lr)
    elif head_init != "random":
        from headplast.errors import HeadplastError
        raise HeadplastError(f"unknown --head-init '{head_init}'", "use probe or random")
    model.eval()
    return model, probe


@torch.no_grad()
def first_token_features(model, adapter: ArchAdapter, enc, pad_id: int, batch_size: int = 64):
    """Last-layer hidden state of the token the task head reads, for each example: [N, D] (token 0;
    decoders: the last non-padding token, after the final norm)."""
    model.eval()
    base = adapter.base_of(model)
    device = next(model.parameters()).device
    feats = None
    for idx, batch in sorted_batches(enc, batch_size, pad_id):
        batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        seq = base(**batch).last_hidden_state  # [B, T, D] (decoders: already after the final norm)
        cls = seq[torch.arange(seq.shape[0], device=device), adapter.read_positions(model, batch["input_ids"])]
        if feats is None:
            feats = torch.zeros(len(enc), cls.shape[-1], device=device, dtype=cls.dtype)
        feats[torch.as_tensor(idx, device=device)] = cls
    return feats


def _probe_loss(model, adapter, feats, labels, regression: bool):
    logits = adapter.head_fn(model, feats)  # feats [N, 1, D]: what the head reads
    return F.mse_loss(logits[:, 0], labels.float()) if regression else F.cross_entropy(logits, labels)


def fit_probe(model, adapter, tokenizer, train, task, seed, max_length, steps, lr) -> dict:
    """Full-batch AdamW on the head modules over cached features (the encoder is frozen).

    A linear probe on a few thousand examples overfits fast (the pooler alone has D^2
    weights), and an overconfident head would make every importance a measurement of
    that head. So 10% of the training examples are held out and the head is taken at the
    step with the lowest held-out loss (early stopping).
    """
    enc = encode(tokenizer, train, max_length)
    feats = first_token_features(model, adapter, enc, tokenizer.pad_token_id).unsqueeze(1)  # [N,1,D]
    device = feats.device
    labels = torch.as_tensor(train.labels, device=device)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen).to(device)
    n_ho = max(1, len(labels) // 10)
    ho, fit = perm[:n_ho], perm[n_ho:]
    modules = [_module(model, name) for name in adapter.head_modules]
    params = [p for m in modules for p in m.parameters()]
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.eval()  # dropout off: the probe is deterministic
    # the best head so far is kept on the device (a select per step, no host round trip)
    with torch.no_grad():
        best_loss = _probe_loss(model, adapter, feats[ho], labels[ho], task.is_regression)
        best = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
        best_step = torch.zeros((), dtype=torch.long, device=device)
    for step in range(1, steps + 1):
        loss = _probe_loss(model, adapter, feats[fit], labels[fit], task.is_regression)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            ho_loss = _probe_loss(model, adapter, feats[ho], labels[ho], task.is_regression)
            better = ho_loss < best_loss
            best_loss = torch.where(better, ho_loss, best_loss)
            best_step = torch.where(better, step, best_step)
            for m, b in zip(modules, best):
                for k, v in m.state_dict().items():
                    b[k].copy_(torch.where(better, v, b[k]))
    for m, b in zip(modules, best):
        m.load_state_dict(b)
    torch.random.set_rng_state(rng_state)
    return {"best_step": int(best_step), "heldout_loss": float(best_loss), "max_steps": steps, "lr": lr,
            "heldout_examples": int(n_ho)}


def _module(model, name):
    return model.get_submodule(name)
