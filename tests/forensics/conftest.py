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


#: The one partition of rawcap.packets that tests write Kafka-compressed (gzip) batches to.
#: A plaintext-client read leaves a partition holding such a batch to aiokafka (rawcap's own
#: client decodes only uncompressed record batches), even when the batch is another node's,
#: so a test that asserts the plaintext client did all the reading keeps off this partition.
GZIP_PARTITION = 5


def node_on_partition(partition: int, partitions: int = 6, *, on: bool = True) -> str:
    """A fresh node name whose key the default partitioner sends to ``partition`` (with
    ``on=False``: to any partition but that one)."""
    from rawcap.window import node_partition

    while True:
        name = f"f{uuid.uuid4().hex[:10]}"
        if (node_partition(name, partitions) == partition) is on:
            return name
