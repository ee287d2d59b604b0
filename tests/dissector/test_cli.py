"""CLI behaviour on bad input: one line, non-zero, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RAWCAP = [sys.executable, "-m", "rawcap.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAWCAP, *args], capture_output=True, text=True, timeout=60)


def test_missing_and_garbage_pcap(tmp_path: Path) -> None:
    r = run("dissect", "--pcap", str(tmp_path / "nope.pcap"), "--no-store")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.pcap" in r.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all" * 10)
    r = run("dissect", "--pcap", str(junk), "--no-store")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "junk.pcap" in r.stderr


def test_truncated_pcap_keeps_calls_before_the_cut(real_pcap: Path, tmp_path: Path) -> None:
    data = real_pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])
    r = run("dissect", "--pcap", str(cut), "--no-store")
    assert r.returncode == 2 and "truncated" in r.stderr and r.stderr.count("\n") == 1
    assert r.stdout.count("http1") >= 5  # calls before the cut were still printed


def test_range_needs_from_and_pcap_refuses_range(real_pcap: Path) -> None:
    r = run("dissect", "--bootstrap", "127.0.0.1:1")
    assert r.returncode == 2 and "--from" in r.stderr
    r = run("dissect", "--pcap", str(real_pcap), "--from", "-5m", "--no-store")
    assert r.returncode == 2 and "--pcap" in r.stderr
