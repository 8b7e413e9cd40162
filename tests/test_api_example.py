"""The README's Python API example runs as written (on a tiny model instead of the main job's θ0)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(model_dirs):
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ckpt = 'ckpt = "outputs/FFT/SST-2/seed1/ckpt_init"'
    assert ckpt in code, "the example's checkpoint line changed: update this test"
    code = code.replace(ckpt, f'ckpt = "{model_dirs["bert"]}"').replace("gates[2, [3, 7]]", "gates[1, [1, 3]]")
    ns: dict = {}
    exec(compile(code, "README.md:python-api", "exec"), ns)
    res, logits = ns["res"], ns["logits"]
    assert res.importance.shape == (2, 4) and np.isfinite(res.importance).all()
    assert res.losses.shape == (256, 1 + 8)
    # the gated forward pass differs from the ungated one (the gates took effect) ...
    model, tok = ns["model"], ns["tok"]
    import torch

    with torch.no_grad():
        plain = model(**tok("a gripping, funny film", return_tensors="pt")).logits
    assert not torch.equal(plain, logits)
    # ... and the hooks are gone after the block
    assert all(not m._forward_pre_hooks for m in model.modules())
