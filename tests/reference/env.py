"""A second transformers beside the project's: 4.57, the last release with `head_mask`.

transformers 5 dropped `head_mask` (it is silently ignored), so headplast gates heads with hooks.
To compare with what the field used before, the reference test runs transformers 4.57 in a
subprocess, installed with pip into its own folder (`--target`, no dependencies except the two
whose 4.57-compatible versions differ from the project's). Skipped, saying why, where pip cannot
reach PyPI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PINS = ("transformers==4.57.3", "tokenizers==0.22.1", "huggingface_hub==0.36.0")
SCRIPT = Path(__file__).with_name("tf4_head_mask.py")


def transformers4() -> Path:
    """The folder holding transformers 4.57 (made once, kept in ~/.cache)."""
    root = Path(os.environ.get("HEADPLAST_REFERENCE_ENV",
                               Path.home() / ".cache" / "headplast" / "reference-transformers-4.57.3"))
    if (root / ".complete").exists():
        return root
    # short network timeouts: without PyPI the test skips in about a minute instead of pip's retries
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--timeout", "20", "--retries", "1",
           "--target", str(root), *PINS]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"the transformers 4.57 reference environment could not be installed ({' '.join(PINS)}): "
                    "pip took over 5 minutes")
    if r.returncode != 0:
        pytest.skip(f"the transformers 4.57 reference environment could not be installed ({' '.join(PINS)}): "
                    f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'pip failed'}")
    (root / ".complete").write_text("\n".join(PINS) + "\n")
    return root


def run_reference(env: Path, *args: str) -> None:
    """Run tf4_head_mask.py under transformers 4.57 (its folder first on the path)."""
    pyenv = {**os.environ, "PYTHONPATH": str(env), "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=pyenv,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
