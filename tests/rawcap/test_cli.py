"""The CLI contract: every DESIGN.md command is listed; `--from -5m` parses as typed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rawcap.cli import _fix_time_args, build_parser, main

DESIGN_COMMANDS = ["stack", "capture", "k8s-watch", "enrich", "archive", "dissect", "consume",
                   "pcap", "snapshot", "calls", "flows", "dissection"]


def rawcap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rawcap.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_help_lists_every_design_command() -> None:
    out = rawcap("--help")
    assert out.returncode == 0
    for name in DESIGN_COMMANDS:
        assert f"    {name} " in out.stdout, name


def test_relative_time_is_not_taken_for_an_option() -> None:
    assert _fix_time_args(["consume", "--from", "-5m", "--to", "now"]) == [
        "consume", "--from=-5m", "--to", "now"]
    assert _fix_time_args(["--from", "--json"]) == ["--from", "--json"]


def test_config_show_json_reflects_file_env_and_flags(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    values = tmp_path / "v.yaml"
    values.write_text("tap:\n  capture:\n    raw:\n      storageSize: 2Gi\n")
    monkeypatch.setenv("RAWCAP_TAP_REGEX", "^web-")
    assert main(["--config", str(values), "--bootstrap", "k:1", "config", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tap.capture.raw.storageSize"] == 2 * 1024**3
    assert doc["tap.regex"] == "^web-"
    assert doc["kafka.bootstrap"] == "k:1"


def test_bad_config_is_one_line_and_nonzero(tmp_path: Path) -> None:
    values = tmp_path / "v.yaml"
    values.write_text("tap:\n  capture:\n    stopAfter: forever\n")
    out = rawcap("--config", str(values), "config", "show")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "tap.capture.stopAfter" in out.stderr and "duration" in out.stderr


def test_parser_builds_with_every_installed_package() -> None:
    parser = build_parser()
    assert parser.prog == "rawcap"
