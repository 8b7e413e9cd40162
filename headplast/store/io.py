"""Atomic writes, validated reads and content hashes: a crash or a bad input never loses what
was written, and a file that changed after it was written is noticed.

Every write goes through `atomic_path`: the content is written to a hidden temporary file in
the target's folder and renamed over the target, so a reader sees the old file or the new
one, never half of one. Temporary names start with ".", carry their writer (`~pid@host~`)
and end with ".tmp", so that `clean_temporaries` can remove what a killed process left and
nothing a live one is writing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from headplast.errors import HeadplastError
from headplast.store.locks import tmp_tag, writer_gone

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp/mkdtemp create 0600/0700, the final file gets the usual mode


@contextmanager
def atomic_path(path: str | Path, directory: bool = False):
    """Yields a temporary path beside `path`; on success it replaces `path` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{tmp_tag()}",
                                    suffix=TMP_SUFFIX))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{tmp_tag()}", suffix=TMP_SUFFIX)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
        if directory and path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.{tmp_tag()}",
                                        suffix=TMP_SUFFIX))
            os.replace(path, old / path.name)  # move the old folder aside, then swap in the new one
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def clean_temporaries(folder: str | Path) -> list[Path]:
    """Remove temporary files and folders a killed process left in `folder` (not recursive);
    those of live processes (another pipeline writing beside this step) are kept."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            if not writer_gone(p):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_output_root(root: str | Path) -> Path:
    """An output root must be a folder (or not exist yet: it is created when first written)."""
    root = Path(root)
    for p in (root, *root.parents):
        if p.exists() and not p.is_dir():
            raise HeadplastError(f"--output-root {root}: {p} is a file, not a folder",
                                 "pass a folder for --output-root (it is created if missing)")
        if p.exists():
            break
    return root


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


def nulls_as_nan(obj):
    """The inverse of _clean for numbers: every null in `obj` read back as NaN (for sections of
    a file that hold only numbers, where null can only be a NaN that was written)."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: nulls_as_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nulls_as_nan(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "file", fix: str = "") -> dict:
    path = Path(path)
    if not path.exists():
        raise HeadplastError(f"missing {what}: {path}", fix or None)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadplastError(f"{path} is not valid JSON ({e})", fix or "re-run the step with --force") from e


def atomic_write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))


def read_jsonl(path: str | Path, n_rows: int | None = None, fields=(), fix: str = "") -> list[dict]:
    """Read a per-head jsonl, checking it is complete: n_rows rows, each with `fields`."""
    path = Path(path)
    fix = fix or "re-run the step that wrote it with --force"
    if not path.exists():
        raise HeadplastError(f"missing {path}", fix)
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise HeadplastError(f"{path} is malformed at line {i + 1} (truncated or corrupt)", fix) from e
    if n_rows is not None and len(rows) != n_rows:
        raise HeadplastError(f"{path} has {len(rows)} rows, expected {n_rows} (one per head)", fix)
    for i, r in enumerate(rows):
        missing = [k for k in ("layer", "head", *fields) if k not in r]
        if missing:
            raise HeadplastError(f"{path} line {i + 1} lacks {missing}", fix)
    return rows


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def atomic_copytree(src: str | Path, dst: str | Path, ignore_hidden: bool = False) -> None:
    """Copy a directory so that dst appears complete or not at all (hidden entries optionally left out)."""
    ignore = shutil.ignore_patterns(".*") if ignore_hidden else None
    with atomic_path(dst, directory=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=ignore)


def atomic_copyfile(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_key(*parts) -> str:
    """A short stable hash of JSON-able parts (keys of steps and shared entries)."""
    return hashlib.sha256(json.dumps(_clean(list(parts)), sort_keys=True, default=str).encode()).hexdigest()[:16]


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
