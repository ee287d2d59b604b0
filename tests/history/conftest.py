"""History fixtures: one data set of calls and flows, produced to Kafka and written into the
archive by the real ``rawcap archive tables`` (module-scoped: the writer runs once)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from schemas import topics
from schemas.calls import Call
from schemas.flows import FlowRecord
from tests.archiver.helpers import Proc, precommit_end, wait_committed

from .helpers import HOUR_NS, produce_calls_flows, steady


@dataclass
class Written:
    env: dict[str, str]
    calls: list[Call]
    flows: list[FlowRecord]
    start_ns: int
    end_ns: int


def stack_env(stack: Any, prefix: str) -> dict[str, str]:
    return {
        "RAWCAP_BOOTSTRAP": stack.bootstrap,
        "AWS_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_REGION": "us-east-1",
        "RAWCAP_ARCHIVE_URL": f"s3://{stack.bucket}/{prefix}",
    }


@pytest.fixture(scope="module")
def written(stack: Any) -> Written:
    """30 hours of calls (3 services, 2 nodes, 40-48 per service and hour, 1 % failing) and
    one flow per call, ending 2 days ago: in Kafka and, through the writer, in the archive."""
    run = f"h{uuid.uuid4().hex[:8]}"
    env = stack_env(stack, run)
    group = f"{run}-g"
    for kind, topic in (("calls", topics.CALLS), ("flows", topics.FLOWS)):
        anyio.run(precommit_end, stack.bootstrap, f"{group}-{kind}", topic)
    start = (time.time_ns() // HOUR_NS - 80) * HOUR_NS
    pairs = list(steady(start, 30, nodes=(f"{run}-a", f"{run}-b")))
    anyio.run(produce_calls_flows, stack.bootstrap, pairs)
    w = Proc(["archive", "tables", "--group", group, "--flush-interval", "1s"], env)
    try:
        w.wait_for("archiver running", timeout=60, times=2)
        wait_committed(stack.bootstrap, f"{group}-calls", [0], timeout=120, topic=topics.CALLS)
        wait_committed(stack.bootstrap, f"{group}-flows", [0], timeout=120, topic=topics.FLOWS)
    finally:
        assert w.stop() == 0, w.text
    return Written(env, [c for c, _f in pairs], [f for _c, f in pairs], start, start + 30 * HOUR_NS)
