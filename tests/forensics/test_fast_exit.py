"""``pcap export`` ends its process without interpreter teardown on success
(``rawcap.cli._exit_now``): the exit code, the output file, stdout and stderr must be exactly
what a normal exit leaves, and an error still takes the normal path (one line, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import DATA, RAWCAP, rawcap, write_buffer

FROM = "2026-11-23T00:00:00Z"


@pytest.fixture
def buf(tmp_path: Path) -> dict[str, str]:
    write_buffer(tmp_path / "buf", "node-a", DATA / "small.pcap", segments=1)
    return {"RAWCAP_CAPTURE_BUFFER_DIR": str(tmp_path / "buf")}


def _export(buf: dict[str, str], out: str, *, fast: bool) -> subprocess.CompletedProcess[bytes]:
    env = {**buf, "RAWCAP_TEST_HOOKS": "" if fast else "no-fast-exit"}
    return rawcap("pcap", "export", "--source", "local", "--from", FROM, "-o", out, env=env)


def test_fast_exit_leaves_what_a_normal_exit_leaves(buf: dict[str, str], tmp_path: Path) -> None:
    fast, slow = tmp_path / "f.pcapng", tmp_path / "s.pcapng"
    pf, ps = _export(buf, str(fast), fast=True), _export(buf, str(slow), fast=False)
    assert pf.returncode == ps.returncode == 0, pf.stderr
    assert fast.read_bytes() == slow.read_bytes() and fast.stat().st_size > 1000
    assert pf.stderr.replace(b"f.pcapng", b"s.pcapng") == ps.stderr
    assert pf.stderr.decode().startswith("rawcap: wrote 53 packets")
    assert not list(tmp_path.glob(".*.part"))
    # -o -: everything reaches stdout (a pipe here) before the process ends.
    po = _export(buf, "-", fast=True)
    assert po.returncode == 0 and po.stdout == fast.read_bytes()


def test_empty_window_still_says_so(buf: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "e.pcapng"
    p = rawcap("pcap", "export", "--source", "local", "--from", "2020-01-01T00:00:00Z",
               "--to", "2020-01-01T00:01:00Z", "-o", str(out), env=buf)
    assert p.returncode == 0
    assert p.stderr.decode().strip().startswith("rawcap: no packets in the window")
    assert out.stat().st_size > 0


def test_errors_take_the_normal_path(buf: dict[str, str], tmp_path: Path) -> None:
    p = rawcap("pcap", "export", "--source", "local", "--from", "-1m", "--to", "-2m",
               "-o", str(tmp_path / "x.pcapng"), env=buf)
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and err.startswith("rawcap: error: ") and len(err.splitlines()) == 1


def _run(code: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env={**os.environ, "RAWCAP_TEST_HOOKS": ""})


def test_exit_now_keeps_code_and_buffered_output() -> None:
    p = _run(
        "import logging, sys\n"
        "from rawcap.cli import _exit_now\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "print('buffered', end='')\n"
        "logging.getLogger('t').warning('logged')\n"
        "_exit_now(3)\n"
        "raise SystemExit('not reached')\n"
    )
    assert p.returncode == 3 and p.stdout == b"buffered" and b"logged" in p.stderr
    assert b"not reached" not in p.stderr


def test_exit_now_leaves_a_running_thread_to_the_normal_exit() -> None:
    """A non-daemon thread still running after the grace: no os._exit (the normal exit
    joins the thread)."""
    p = _run(
        "import threading, time\n"
        "from rawcap.cli import _exit_now\n"
        "t = threading.Thread(target=lambda: (time.sleep(1.5), print('thread done')))\n"
        "t.start()\n"
        "_exit_now(0)\n"
        "print('returned')\n"
    )
    assert p.returncode == 0 and p.stdout.splitlines() == [b"returned", b"thread done"]


def test_exit_now_waits_for_a_thread_that_is_ending() -> None:
    """A thread that ends within the grace (AnyIO's workers after the loop) is waited for."""
    p = _run(
        "import threading, time\n"
        "from rawcap.cli import _exit_now\n"
        "t = threading.Thread(target=lambda: (time.sleep(0.02), print('thread done')))\n"
        "t.start()\n"
        "_exit_now(5)\n"
        "print('returned')\n"
    )
    assert p.returncode == 5 and p.stdout.splitlines() == [b"thread done"]


def test_in_process_main_returns(
    buf: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``main(argv)`` called by a program (not the ``rawcap`` script) returns its code."""
    from rawcap.cli import main

    for k, v in buf.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAWCAP_TEST_HOOKS", raising=False)
    out = tmp_path / "in.pcapng"
    assert main(["pcap", "export", "--source", "local", "--from", FROM, "-o", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_script_runs_main_without_argv() -> None:
    """The fast exit needs the script to call main() with no argv (its own command line)."""
    script = Path(RAWCAP[0]).read_text()
    assert "main()" in script
