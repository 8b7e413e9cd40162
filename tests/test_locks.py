"""Locks between processes: refuse or wait with who holds it, recover from kill -9, NFS-style
stale detection by heartbeat, re-entrant within a process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from headplast.errors import HeadplastError
from headplast.store import locks

HOLD = """
import sys, time
from headplast.store import locks
with locks.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder, seconds):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_folder_is_refused_with_who_holds_it(tmp_path):
    d = tmp_path / "run"
    p = _holder(d, 60)
    try:
        with pytest.raises(HeadplastError, match=rf"in use by pid {p.pid} on host {socket.gethostname()} since 20"):
            with locks.hold(d, timeout=0):
                pass
        assert locks.holder(d)["pid"] == p.pid
    finally:
        p.kill()
        p.wait()


def test_a_second_process_waits_for_the_holder(tmp_path, capsys):
    d = tmp_path / "run"
    p = _holder(d, 1.5)
    t = time.time()
    with locks.hold(d, timeout=60):
        waited = time.time() - t
    p.wait()
    assert waited > 1.0
    assert f"waiting: {d} is in use by pid {p.pid}" in capsys.readouterr().err
    assert not locks.lock_path(d).exists()  # released


def test_the_lock_of_a_killed_process_is_recovered(tmp_path):
    d = tmp_path / "run"
    p = _holder(d, 600)
    os.kill(p.pid, signal.SIGKILL)
    time.sleep(0.2)  # not reaped yet: a zombie holds no lock either
    assert locks.lock_path(d).exists() and locks.holder(d) is None  # left behind, but stale
    p.wait()
    with locks.hold(d, timeout=0):
        assert json.loads(locks.lock_path(d).read_text())["pid"] == os.getpid()


def _fake_lock(d, **owner):
    path = locks.lock_path(d)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"since": "2026-01-01T00:00:00+00:00", "token": "x", **owner}))
    return path


def test_a_lock_of_another_host_is_stale_only_when_its_heartbeat_stopped(tmp_path):
    d = tmp_path / "run"
    path = _fake_lock(d, pid=1, host="node-that-does-not-exist")
    with pytest.raises(HeadplastError, match="in use by pid 1 on host node-that-does-not-exist"):
        with locks.hold(d, timeout=0):
            pass
    old = time.time() - locks.STALE_AFTER - 5
    os.utime(path, (old, old))  # no heartbeat for longer than STALE_AFTER
    with locks.hold(d, timeout=0):
        pass


def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    d = tmp_path / "run"
    _fake_lock(d, pid=os.getpid(), host=socket.gethostname(), start="1")  # alive pid, other process start
    with locks.hold(d, timeout=0):
        pass


def test_the_holder_refreshes_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT", 0.1)
    d = tmp_path / "run"
    with locks.hold(d):
        path = locks.lock_path(d)
        old = time.time() - 1000
        os.utime(path, (old, old))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5


def test_reentrant_within_one_process(tmp_path):
    d = tmp_path / "run"
    with locks.hold(d, timeout=0):
        with locks.hold(d, timeout=0):
            pass
        assert locks.lock_path(d).exists()
    assert not locks.lock_path(d).exists()


def test_a_read_only_folder_names_the_fix(tmp_path, monkeypatch):
    import errno

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(locks.Path, "write_text", refuse)
    with pytest.raises(HeadplastError, match="is read-only") as e:
        with locks.hold(tmp_path / "run", timeout=0):
            pass
    assert "writable --output-root" in e.value.fix


WRITE = """
import sys, time
from pathlib import Path
from headplast.store.io import atomic_path
with atomic_path(Path(sys.argv[1]) / "pipeline_log.json") as tmp:
    tmp.write_text("{}")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_cleaning_a_folder_keeps_what_a_live_process_is_writing_there(tmp_path):
    """A step cleans its folder of what killed processes left; another process writing beside it
    (the pipeline's log next to the report, the lock of a subfolder) is not killed (CI saw a
    second pipeline fail when the first one's report step removed its log's temporary)."""
    from headplast.store.io import clean_temporaries

    p = subprocess.Popen([sys.executable, "-c", WRITE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        live = tmp_path.joinpath(p.stdout.readline().strip())
        assert live.exists() and f"~{p.pid}@{socket.gethostname()}~" in live.name
        old = tmp_path / ".stats.json.x8k2m1.tmp"  # untagged: left by an older version
        gone = tmp_path / f".cases.json.~{2 ** 22 + 7}@{socket.gethostname()}~ab12.tmp"  # no such pid
        far = tmp_path / ".heads.csv.~12@elsewhere~cd34.tmp"  # another host's, still being written
        stale = tmp_path / ".heads.csv.~12@elsewhere~ef56.tmp"  # another host's, untouched for long
        for f in (old, gone, far, stale):
            f.write_text("")
        os.utime(stale, (time.time() - locks.STALE_AFTER - 5,) * 2)
        with locks.hold(tmp_path / "child"):  # this process's own lock temporaries are gone already
            removed = clean_temporaries(tmp_path)
        assert sorted(removed) == sorted([old, gone, stale]) and live.exists() and far.exists()
    finally:
        p.kill()
        p.wait()
    assert live in clean_temporaries(tmp_path) and not live.exists()  # its writer was killed
