"""The computations tests/test_shard.py runs in one process and split across two."""

import copy
from pathlib import Path

import torch

from headplast.arch import get_adapter
from headplast.data import get_task, load_split
from headplast.data.tokenize import encode
from headplast.measure.ablation import ablation_importance, group_importance
from headplast.measure.effect import update_effect
from tiny import ALL_ARCHS, tiny_model, tiny_tokenizer


def _moved(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


def cases(tok_dir: Path):
    """(name, thunk -> arrays) per architecture: importance (zero, mean), update effect and (grouped-query
    models) group importance on 11 RTE examples with batches of 4 and a token budget that makes blocks
    of 1-3 heads."""
    tok = tiny_tokenizer(tok_dir)
    task = get_task("RTE")
    enc = encode(tok, load_split(task, "validation").subset(range(0, 55, 5)), 48)
    for arch in ALL_ARCHS:
        m0 = tiny_model(arch, seed=3)
        m1 = _moved(m0, seed=4)
        ad = get_adapter(m0)
        for abl in ("zero", "mean"):
            def imp(m0=m0, ad=ad, abl=abl):
                r = ablation_importance(m0, ad, enc, task, tok.pad_token_id, 4, abl, max_tokens=300, progress=False)
                return [r.importance, r.importance_se, r.metric_delta, r.kl, r.losses]
            yield f"{arch}/importance_{abl}", imp

        def eff(m0=m0, m1=m1, ad=ad):
            r = update_effect(m0, m1, ad, enc, task, tok.pad_token_id, 4, max_tokens=300, progress=False)
            return [r.effect_fwd, r.effect_fwd_se, r.effect_rev, r.effect_rev_se, r.fwd_values, r.rev_values]
        yield f"{arch}/update_effect", eff

        if ad.group_size(m0.config) > 1:  # grouped-query: units of G heads (--kv-group-effect)
            def grp(m0=m0, m1=m1, ad=ad):
                r = group_importance(m0, m1, ad, enc, task, tok.pad_token_id, 4, max_tokens=300, progress=False)
                return [r.group_I_pre, r.group_I_pre_se, r.group_I_post, r.group_I_post_se]
            yield f"{arch}/importance_group", grp
