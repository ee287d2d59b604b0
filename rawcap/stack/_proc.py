"""Background server processes: spawn detached, track by pid file, stop with SIGTERM.

A pid file alone is not trusted: the pid may have been reused after a reboot, so a process
counts as ours only while its command line still mentions the marker we started it with
(the data directory).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ("free_port", "port_open", "read_pid", "running_pid", "spawn", "stop", "tail")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid recorded in ``pid_file`` if that process is alive and is ours."""
    pid = read_pid(pid_file)
    if pid is None or not _alive(pid) or marker not in _cmdline(pid):
        return None
    return pid


def spawn(argv: Sequence[str], *, log_file: Path, pid_file: Path,
          env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start ``argv`` in its own session (it outlives the CLI), output appended to log_file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=full_env, cwd=cwd, start_new_session=True, close_fds=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    # The Popen object is dropped on purpose: the server must outlive us. Mark it reaped so
    # that Python does not warn about a child still running.
    proc.returncode = 0
    return proc.pid


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(pid_file: Path, marker: str, timeout: float = 30.0) -> bool:
    """SIGTERM the process, wait up to ``timeout``, then SIGKILL. True if one was running."""
    pid = running_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(50):
            _reap(pid)
            if not _alive(pid):
                break
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
