"""Archiver fixtures: the private stack's Kafka and S3 as environment for CLI subprocesses."""

from __future__ import annotations

import uuid
from typing import Any

import pytest


@pytest.fixture
def run_id() -> str:
    """A fresh name for this test's nodes, consumer group and archive prefix."""
    return f"a{uuid.uuid4().hex[:8]}"


@pytest.fixture
def aenv(stack: Any, run_id: str) -> dict[str, str]:
    """Only the four standard AWS variables (plus Kafka): what a user sets for the stack."""
    return {
        "RAWCAP_BOOTSTRAP": stack.bootstrap,
        "RAWCAP_KAFKA_CLIENT_ID": f"archiver-test-{run_id}",
        "AWS_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_REGION": "us-east-1",
        "RAWCAP_ARCHIVE_URL": f"s3://{stack.bucket}/{run_id}",
    }
