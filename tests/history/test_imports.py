"""Polars and matplotlib are imported when a history command runs, never at start-up of
another command (``rawcap pcap export`` must not pay for them)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [["pcap", "export", "--help"], ["trends", "--help"],
                                  ["archive", "tables", "--help"], ["anomalies", "--help"]])
def test_start_up_does_not_import_the_engine(argv: list[str]) -> None:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "rawcap.cli", *argv], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.decode().splitlines() if "|" in line}
    assert "rawcap.cli" in imported or "schemas" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("polars", "matplotlib", "numpy", "pyarrow"))
    assert heavy == [], heavy
