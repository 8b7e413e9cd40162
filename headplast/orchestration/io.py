"""Atomic writes and validated reads: a crash or a bad input never loses what was written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from headplast.errors import HeadplastError


def _tmp_for(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _clean(obj):
    """JSON cannot hold NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "file", fix: str = "") -> dict:
    path = Path(path)
    if not path.exists():
        raise HeadplastError(f"missing {what}: {path}", fix or None)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HeadplastError(f"{path} is not valid JSON ({e})", fix or "re-run the step with --force") from e


def atomic_write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))


def read_jsonl(path: str | Path, n_rows: int | None = None, fields=(), fix: str = "") -> list[dict]:
    """Read a per-head jsonl, checking it is complete: n_rows rows, each with `fields`."""
    path = Path(path)
    if not path.exists():
        raise HeadplastError(f"missing {path}", fix or None)
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise HeadplastError(f"{path} is malformed at line {i + 1} (truncated or corrupt)",
                                     fix or "re-run the step that wrote it with --force") from e
    if n_rows is not None and len(rows) != n_rows:
        raise HeadplastError(f"{path} has {len(rows)} rows, expected {n_rows} (one per head)",
                             fix or "re-run the step that wrote it with --force")
    for i, r in enumerate(rows):
        missing = [k for k in ("layer", "head", *fields) if k not in r]
        if missing:
            raise HeadplastError(f"{path} line {i + 1} lacks {missing}",
                                 fix or "re-run the step that wrote it with --force")
    return rows


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_copytree(src: str | Path, dst: str | Path) -> None:
    """Copy a directory so that dst appears complete or not at all."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def state_dict_hash(state_dict) -> str:
    """Content hash of a model's tensors (names, dtypes, shapes, bytes), independent of file format."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
