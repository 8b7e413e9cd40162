"""Locks on folders of the output tree (a run, a shared theta0 entry, a comparison), held
across processes and machines on one file system.

A lock is a small JSON file `.<name>.lock` beside the folder (so it survives the folder
being replaced atomically). It is created with `link()` from a private temporary file,
the classic way to create a file exclusively that also holds on NFS; nothing relies on
in-process state. The holder touches the file every HEARTBEAT seconds. A lock is stale,
and is broken, when its process is gone (same host: no such pid, or a pid reused by a
later process) or its heartbeat stopped (another host: older than STALE_AFTER). So a
`kill -9` never leaves a folder locked for good.

Waiting: by default a second process waits for the holder to finish (printing once who
holds it), then re-checks whether the work is still to do; `set_timeout(0)` (the CLI's
`--lock-timeout 0`) refuses at once instead.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from headplast.errors import HeadplastError

HEARTBEAT = 15.0  # seconds between touches of a held lock
STALE_AFTER = 300.0  # a lock of another host whose heartbeat is older than this is stale
POLL = 0.5

_timeout: float | None = None  # None: wait for as long as the holder lives
_held: dict[Path, int] = {}  # re-entrancy within this process (the file is the lock)


def set_timeout(seconds: float | None) -> None:
    global _timeout
    _timeout = seconds


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (empty where there is no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (tells a reused pid apart); None if unknown."""
    st = _proc_stat(pid)
    return st[19] if len(st) > 19 else None


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": uuid.uuid4().hex,
            "argv": " ".join(sys.argv[:4])}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: judged by its age alone


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process `pid` of this host still runs (a zombie does not; with `start`, a later
    process that reused the pid does not either)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    st = _proc_stat(pid)
    if st and st[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    now = st[19] if len(st) > 19 else None
    return not (now and start and now != start)


def _alive(owner: dict, path: Path) -> bool:
    if owner.get("host") == socket.gethostname() and owner.get("pid"):
        return pid_alive(int(owner["pid"]), owner.get("start"))
    try:
        return time.time() - path.stat().st_mtime < STALE_AFTER
    except FileNotFoundError:
        return False


def tmp_tag() -> str:
    """The writer's mark in a temporary file's name (`~pid@host~`): a folder's temporaries are
    removed only when their writer is gone, since processes that do not hold the folder's lock
    write there too (the locks of its subfolders, the pipeline's log beside the report)."""
    return f"~{os.getpid()}@{_host()}~"


def _host() -> str:
    """This host's name as a tag holds it (characters a file name or the tag cannot hold replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())


_TAG = re.compile(r"~(\d+)@([A-Za-z0-9._-]+)~")


def writer_gone(tmp: Path) -> bool:
    """Whether the process that wrote temporary `tmp` is gone (untagged: left by an older version)."""
    tags = _TAG.findall(tmp.name)  # the last one is the writer's (the target's own name may look like one)
    if not tags:
        return True
    m = ("", *tags[-1])
    if m[2] == _host():
        return int(m[1]) != os.getpid() and not pid_alive(int(m[1]))
    try:  # another host's process: gone when the file has not changed for STALE_AFTER
        return time.time() - tmp.stat().st_mtime > STALE_AFTER
    except FileNotFoundError:
        return False


def describe(owner: dict) -> str:
    return (f"in use by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since "
            f"{owner.get('since', '?')} ({owner.get('argv', '')})")


def _try_create(path: Path, owner: dict) -> bool:
    tmp = path.parent / f".{path.name}.{tmp_tag()}{owner['token']}.tmp"
    try:
        tmp.write_text(json.dumps(owner))
    except OSError as e:
        raise _unwritable(path.parent, e) from e
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _break_stale(path: Path, seen: dict) -> None:
    """Move a stale lock aside; if another process replaced it meanwhile, put that one back."""
    aside = path.parent / f".{path.name}.stale{tmp_tag()}{uuid.uuid4().hex}.tmp"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if (_read(aside) or {}).get("token") != seen.get("token"):
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def _unwritable(folder: Path, e: OSError) -> HeadplastError:
    why = "is read-only" if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else f"cannot be written ({e})"
    return HeadplastError(f"{folder} {why}, and this step has to write there",
                          "choose a writable --output-root (finished steps are only read, so a read-only copy "
                          "of finished results works)")


def _acquire(path: Path, what: str, timeout: float | None) -> dict:
    owner, t0, told = _owner(), time.time(), False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path.parent, e) from e
    while not _try_create(path, owner):
        seen = _read(path)
        if seen is None:
            continue  # released in between
        if not _alive(seen, path):
            _break_stale(path, seen)
            continue
        if timeout is not None and time.time() - t0 >= timeout:
            raise HeadplastError(f"{what} is {describe(seen)}",
                                 "wait for that command to finish (or stop it), then run again; a lock left by a "
                                 f"killed process is removed automatically ({path})")
        if not told:
            print(f"waiting: {what} is {describe(seen)}", file=sys.stderr, flush=True)
            told = True
        time.sleep(POLL)
    return owner


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()

    def run(self):
        while not self.stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                return


@contextmanager
def hold(folder: str | Path, what: str | None = None, timeout: float | None = -1.0):
    """Hold the lock of `folder` for the duration of the block (re-entrant in one process).
    timeout: seconds to wait for another holder; None waits for as long as it lives; the
    default -1 uses the process-wide setting (set_timeout)."""
    path = lock_path(folder)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    owner = _acquire(path, what or str(Path(folder)), _timeout if timeout == -1.0 else timeout)
    _held[path] = 1
    beat = _Heartbeat(path)
    beat.start()
    try:
        yield
    finally:
        beat.stop.set()
        del _held[path]
        if (_read(path) or {}).get("token") == owner["token"]:
            path.unlink(missing_ok=True)


def holder(folder: str | Path) -> dict | None:
    """Who holds the lock of `folder` now (None if nobody alive does)."""
    path = lock_path(folder)
    seen = _read(path)
    return seen if seen is not None and _alive(seen, path) else None
