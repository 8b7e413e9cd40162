"""The one freshness rule, for every step.

A step's key is a hash of its config, of the content hashes of its inputs and of the version of
the code that computes it (`version`: bumped when a fix changes what the step writes, so results
of the code before count as outdated and are redone, exactly they and what reads them). When a step
finishes it writes a record beside its outputs (`<folder>/.steps/<step>.json`): the key, and
a content hash of every output file. A step is skipped only when its recorded key equals
the key it would be run with now and every output still has its recorded hash; anything
that reads a step's output can check it against the same record.
"""

from __future__ import annotations

import functools
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from headplast import __version__

from headplast.errors import HeadplastError
from headplast.store.io import atomic_write_json, file_sha256, read_json, text_key

RECORD_DIR = ".steps"


def step_key(step: str, config: dict, inputs: dict, version: int = 1) -> str:
    """The key of a step run with `config` on inputs with content hashes `inputs` by code of `version`.

    Version 1 is the code from before versions were kept: it is left out of the key, so results
    made then stay valid where the code has not changed since."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"step {step}: version must be an int >= 1, not {version!r}")
    key = {"step": step, "config": config, "inputs": inputs}
    if version != 1:
        key["version"] = version
    return text_key(key)


def record_path(base: str | Path, step: str) -> Path:
    return Path(base) / RECORD_DIR / f"{step}.json"


def read_record(base: str | Path, step: str) -> dict | None:
    p = record_path(base, step)
    return read_json(p, "step record") if p.exists() else None


def _files(base: Path, rel: str) -> list[str]:
    """A relative output path, or every file inside an output folder (hidden temporaries skipped)."""
    p = base / rel
    if p.is_dir():
        return sorted(str(f.relative_to(base)) for f in p.rglob("*")
                      if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
    return [rel]


def hash_outputs(base: str | Path, outputs) -> dict[str, str]:
    base = Path(base)
    return {f: file_sha256(base / f) for rel in outputs for f in _files(base, rel)}


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The package version, and the git commit when running from a checkout (with '+dirty' when
    it has uncommitted changes): provenance in every record, not part of any key (a key changes
    only with the version of the step's own code)."""
    out = {"headplast": __version__}
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        try:
            run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,  # noqa: E731
                                            timeout=10).stdout.strip()
            commit = run("rev-parse", "HEAD")
            if commit:
                out["commit"] = commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def write_record(base: str | Path, step: str, key: str, outputs, seconds: float | None = None,
                 version: int = 1, **extra) -> dict:
    """Record that `step` with `key` (made by code of `version`) produced `outputs` (paths relative
    to base; folders expand)."""
    rec = {"step": step, "key": key, "version": version, "code": code_version(),
           "outputs": hash_outputs(base, outputs), "seconds": None if seconds is None else round(seconds, 2),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write_json(record_path(base, step), rec)
    return rec


@dataclass(frozen=True)
class Freshness:
    state: str  # fresh | missing (never recorded) | stale (other key) | changed (outputs altered)
    detail: str = ""

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"


def changed_outputs(base: str | Path, rec: dict) -> list[str]:
    """Outputs of a record that are missing or whose content differs from the record."""
    base = Path(base)
    bad = []
    for rel, h in rec["outputs"].items():
        p = base / rel
        if not p.is_file() or file_sha256(p) != h:
            bad.append(rel)
    return bad


def freshness(base: str | Path, step: str, key: str) -> Freshness:
    rec = read_record(base, step)
    if rec is None:
        return Freshness("missing")
    if rec.get("key") != key:
        return Freshness("stale", f"recorded key {rec.get('key')} != {key}")
    bad = changed_outputs(base, rec)
    if bad:
        return Freshness("changed", ", ".join(bad))
    return Freshness("fresh")


def verify(base: str | Path, step: str, fix: str) -> dict:
    """The record of a finished step, after checking its outputs are unaltered.

    Raises a HeadplastError naming the first altered, truncated or missing file and `fix`.
    """
    base = Path(base)
    rec = read_record(base, step)
    if rec is None:
        raise HeadplastError(f"{base} has no record of step '{step}' ({record_path(base, step)} is missing)", fix)
    bad = changed_outputs(base, rec)
    if bad:
        altered = [b for b in bad if (base / b).is_file()]  # named first: a missing file beside it means replaced
        if not altered:
            raise HeadplastError(f"{base / bad[0]} is missing (step '{step}' wrote it)", fix)
        raise HeadplastError(f"{base / altered[0]} was altered, truncated or replaced after step '{step}' wrote it "
                             f"(its content hash differs from {record_path(base, step)})", fix)
    return rec
