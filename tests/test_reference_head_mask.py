"""headplast's zero ablation against transformers 4.57's own `head_mask` (an independent
implementation: it masks attention probabilities inside the model's attention, headplast gates the
input of O with a hook), on tiny random models saved and reloaded by each version."""

import numpy as np
import pytest

from headplast.arch import get_adapter
from headplast.data.tokenize import collate
from headplast.measure.ablation import ablation_importance
from reference.env import run_reference, transformers4
from tiny import tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.reference]


# encoders and the decoder whose transformers 4 class took head_mask (Llama's family never did)
@pytest.mark.parametrize("arch", ["gpt2", "bert", "roberta", "distilbert"])
def test_zero_ablation_equals_transformers4_head_mask(arch, enc_small, tok, rte, tmp_path):
    env = transformers4()
    task, _ = rte
    model = tiny_model(arch, init=0.3)
    if arch == "gpt2":
        model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(tmp_path / "m")
    b = collate(enc_small.features, tok.pad_token_id)
    np.savez(tmp_path / "batch.npz", labels=np.asarray(enc_small.labels, dtype=np.int64),
             **{k: v.numpy() for k, v in b.items() if k != "labels"})
    run_reference(env, str(tmp_path / "m"), str(tmp_path / "batch.npz"), str(tmp_path / "ref.npy"))
    ref = np.load(tmp_path / "ref.npy")  # [N, 1 + L*H]
    ours = ablation_importance(model, get_adapter(model), enc_small, task, tok.pad_token_id, batch_size=4,
                               max_tokens=100, progress=False)
    L, H = ours.importance.shape
    assert ref.shape == ours.losses.shape == (len(enc_small), 1 + L * H)
    assert np.abs(ref[:, 1:] - ref[:, :1]).max() > 1e-2, "heads should matter in the tiny model"
    np.testing.assert_allclose(ours.losses, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(ours.importance, (ref[:, 1:] - ref[:, :1]).mean(0).reshape(L, H), atol=2e-5, rtol=0)
