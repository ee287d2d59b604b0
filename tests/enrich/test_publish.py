"""``rawcap enrich``'s publishing of ``rawcap.flows`` against a real broker: what consumers
read is what one aiokafka ``send`` per record (the path it replaced) gives them."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from enrich._consumer import publish_flows
from rawcap.config import Config
from rawcap.kafka import BatchProducer, admin_kwargs, consumer_kwargs, producer_kwargs, stop_client
from schemas.flows import FlowRecord, ProcessInfo, encode_flow
from schemas.k8s import Workload

pytestmark = pytest.mark.integration
PARTITIONS = 4


def _flows(n: int) -> list[FlowRecord]:
    """Flow records of 7 nodes in runs of one node (as ``Enricher.due`` hands them out), one
    run long enough to span several record batches, first-packet times out of order."""
    rng = random.Random(11)
    nodes = [f"pub-node-{i}" for i in range(7)]
    t0 = 1_796_000_000_000_000_000
    out: list[FlowRecord] = []
    while len(out) < n:
        node = rng.choice(nodes)
        run = 1500 if not out else rng.randrange(1, 300)
        for _ in range(run):
            first = t0 + rng.randrange(-30_000, 30_000) * 1_000_000 + rng.randrange(1_000_000)
            wl = Workload("pod", f"api-{rng.randrange(999)}", "shop", node, "api", "ReplicaSet", "api-5d8f")
            out.append(FlowRecord(
                node=node, proto="tcp", src=f"10.1.{rng.randrange(256)}.{rng.randrange(256)}",
                sport=rng.randrange(32768, 61000), dst="10.96.0.10", dport=80, first_ns=first,
                last_ns=first + 5_000_000, interval_ns=t0 // 10**10 * 10**10, packets_fwd=4,
                bytes_fwd=rng.randrange(60, 9000), packets_rev=3, bytes_rev=rng.randrange(60, 90000),
                flags_fwd=0x1B, flags_rev=0x1A, src_workload=wl if rng.random() < 0.8 else None,
                dst_workload=None, src_process=ProcessInfo(1000, "java", "c" * 64, 7) if rng.random() < 0.5
                else None, dst_process=None))
    return out


async def _topic(cfg: Config) -> str:
    name = f"test-flows-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**admin_kwargs(cfg))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    return name


async def _read(cfg: Config, topic: str) -> dict[int, list[tuple[Any, ...]]]:
    """Per partition, in offset order: (key, value, timestamp, timestamp type, headers)."""
    c = AIOKafkaConsumer(**consumer_kwargs(cfg))
    await c.start()
    out: dict[int, list[tuple[Any, ...]]] = {p: [] for p in range(PARTITIONS)}
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        while any([await c.position(tp) < ends[tp] for tp in tps]):
            for tp, recs in (await c.getmany(timeout_ms=1000, max_records=5000)).items():
                out[tp.partition] += [(m.key, m.value, m.timestamp, m.timestamp_type, tuple(m.headers))
                                      for m in recs]
    finally:
        await stop_client(c)
    return out


async def test_published_flows_are_those_of_one_send_per_record(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    flows = _flows(6000)
    reference, ours = await _topic(cfg), await _topic(cfg)

    old = AIOKafkaProducer(**producer_kwargs(cfg))  # what enrich did before: one send each
    await old.start()
    try:
        futures = [await old.send(reference, encode_flow(r), key=r.node.encode(),
                                  timestamp_ms=r.first_ns // 1_000_000) for r in flows]
        for fut in futures:
            await fut
    finally:
        await stop_client(old)

    producer = BatchProducer(cfg)
    await producer.start()
    try:
        await publish_flows(producer, flows[:2500], ours)  # two rounds, as two due() calls
        await publish_flows(producer, flows[2500:], ours)
    finally:
        await stop_client(producer)

    want, got = await _read(cfg, reference), await _read(cfg, ours)
    assert sum(map(len, want.values())) == len(flows)
    assert sum(1 for recs in want.values() if recs) >= 3  # the keys spread over partitions
    for p in range(PARTITIONS):
        assert got[p] == want[p], f"partition {p}"
