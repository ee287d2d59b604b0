"""compose/ stays consistent: docker-compose.yml, install-stack.sh, the pom and the CLI agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from rawcap.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"


def _kafka_version() -> str:
    m = re.search(r"<kafka.version>([^<]+)</kafka.version>", (COMPOSE / "kafka/pom.xml").read_text())
    assert m
    return m.group(1)


def _minio_version(text: str) -> str:
    m = re.search(r"MINIO_VERSION[:=\-\"{$]*(v0\.0\.0-[0-9a-f-]+)", text)
    assert m, "no pinned MINIO_VERSION"
    return m.group(1)


def test_same_versions_everywhere() -> None:
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert doc["services"]["kafka"]["image"] == f"apache/kafka:{_kafka_version()}"
    assert _minio_version((COMPOSE / "install-stack.sh").read_text()) == \
        _minio_version((COMPOSE / "minio.Dockerfile").read_text())


def test_compose_commands_are_real_cli_commands() -> None:
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert isinstance(choices, dict)
    for name, svc in doc["services"].items():
        if svc.get("image") == "rawcap:dev" and svc.get("entrypoint") is None:
            command = svc["command"]
            assert command[0] in choices, f"service {name}: no command {command[0]!r}"


def test_install_stack_second_run_is_a_fast_no_op() -> None:
    proc = subprocess.run(["bash", str(COMPOSE / "install-stack.sh")], capture_output=True,
                          text=True, timeout=60, check=True)
    assert "present" in proc.stdout and "downloading" not in proc.stdout
    assert "building" not in proc.stdout


def test_shell_scripts_parse() -> None:
    for script in ("scripts/setup.sh", "compose/install-stack.sh", ".ci/run"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True, timeout=10)
