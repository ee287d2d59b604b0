"""Background process bookkeeping of ``rawcap stack`` (pid files that may lie)."""

from __future__ import annotations

import sys
from pathlib import Path

from rawcap.stack import _proc


def test_spawn_track_and_stop(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    pid_file, log = tmp_path / "x.pid", tmp_path / "x.log"
    code = "import sys, time; print('hello', flush=True); time.sleep(60)"
    pid = _proc.spawn([sys.executable, "-c", code, marker], log_file=log, pid_file=pid_file)
    try:
        assert _proc.running_pid(pid_file, marker) == pid
        assert _proc.running_pid(pid_file, "some other data dir") is None  # pid not ours
    finally:
        assert _proc.stop(pid_file, marker, timeout=10) is True
    assert _proc.running_pid(pid_file, marker) is None
    assert not pid_file.exists()
    assert _proc.stop(pid_file, marker) is False  # idempotent


def test_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("999999999\n")
    assert _proc.running_pid(pid_file, "m") is None
    assert _proc.stop(pid_file, "m") is False
    pid_file.write_text("garbage")
    assert _proc.running_pid(pid_file, "m") is None


def test_free_port_is_free() -> None:
    assert not _proc.port_open(_proc.free_port())
