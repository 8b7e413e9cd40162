"""Run under transformers 4.57 (tests/reference/env.py): per-example losses of a saved model
with no head removed and with each head removed by `head_mask`, eager attention.

usage: tf4_head_mask.py MODEL_DIR BATCH.npz OUT.npy -> OUT [N, 1 + L*H] (float64 cross-entropy)
"""

import inspect
import sys

import numpy as np
import torch
import transformers
from torch.nn import functional as F

assert transformers.__version__.startswith("4."), transformers.__version__
model_dir, batch_file, out = sys.argv[1:4]
model = transformers.AutoModelForSequenceClassification.from_pretrained(
    model_dir, attn_implementation="eager", dtype=torch.float32).eval()
b = np.load(batch_file)
ids, mask, labels = (torch.from_numpy(b[k]) for k in ("input_ids", "attention_mask", "labels"))
# sentence pairs (RTE): segment ids where the model takes them (headplast passes them the same way)
extra = {k: torch.from_numpy(b[k]) for k in ("token_type_ids",)
         if k in b and k in inspect.signature(model.forward).parameters}
L, H = model.config.num_hidden_layers, model.config.num_attention_heads
cols = []
with torch.no_grad():
    def loss(head_mask):
        logits = model(input_ids=ids, attention_mask=mask, head_mask=head_mask, **extra).logits
        return F.cross_entropy(logits.double(), labels, reduction="none").numpy()
    cols.append(loss(None))
    for l in range(L):
        for h in range(H):
            m = torch.ones(L, H)
            m[l, h] = 0.0
            cols.append(loss(m))
np.save(out, np.stack(cols, 1))
