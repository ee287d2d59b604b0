"""Forensics fixtures: the real stack's settings as environment for CLI subprocesses."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def kenv(stack: Any, tmp_path: Path) -> dict[str, str]:
    """Environment for ``rawcap`` subprocesses: the private stack, a private snapshot dir."""
    return {
        "RAWCAP_BOOTSTRAP": stack.bootstrap,
        "RAWCAP_KAFKA_CLIENT_ID": f"forensics-test-{uuid.uuid4().hex[:6]}",
        "RAWCAP_SNAPSHOTS_URL": str(tmp_path / "snapshots"),
        **stack.s3_env(),
    }


@pytest.fixture
def node_name(request: pytest.FixtureRequest) -> str:
    """A node name no other test uses (Kafka data outlives a test)."""
    return f"f{uuid.uuid4().hex[:10]}"
