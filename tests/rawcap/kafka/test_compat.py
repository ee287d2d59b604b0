"""Canaries for rawcap.kafka._compat, the one module that uses aiokafka's internals: they fail
loudly when an aiokafka release changes what the shipper's produce path or a group-less read
relies on. The produce path's bytes on the wire must be aiokafka's own encoding of the same
request, laid out in the value's buffer where it can be, and a retry must resend them."""

from __future__ import annotations

import os
import uuid
from typing import Any

import aiokafka
import anyio
from aiokafka import AIOKafkaConsumer
from aiokafka.protocol.produce import ProduceRequest as AiokafkaProduceRequest

from rawcap.kafka import Framed, aiokafka_problems
from rawcap.kafka._compat import ProduceRequest, RecordsBatch, consumer_partitions, install_produce_request
from schemas import topics

_VERSIONS = {0: (3, 7)}  # what a Kafka 4 broker offers for Produce


def test_aiokafka_looks_as_the_compat_module_expects() -> None:
    assert aiokafka_problems() == [], f"aiokafka {aiokafka.__version__} changed"


def test_install_takes_effect() -> None:
    from aiokafka.producer import sender

    install_produce_request()
    install_produce_request()  # idempotent
    assert sender.ProduceRequest is ProduceRequest


def test_build_is_stable_for_retries() -> None:
    b = RecordsBatch(b"k", [((b"v" * 10,), 5), ((b"w" * 3,), 6)])
    b._set_producer_state(1, 2, 3)
    first = b._build().chunks
    b._set_producer_state(9, 9, 9)  # a later state must not change bytes already sent
    assert b._build().chunks is first
    assert b.record_count() == 2 and b.closed() and len(b) == len(b.to_bytes())


def test_request_encoding_equals_aiokafka() -> None:
    batches = []
    for i, (size, count) in enumerate(((100, 1), (1 << 20, 1), (300_000, 3))):
        b = RecordsBatch(f"node-{i}".encode(), [((os.urandom(size),), 1000 + i + k) for k in range(count)])
        b._set_producer_state(7, 0, i)
        b._build()
        batches.append(b)
    parts = [(0, batches[0]), (5, batches[1]), (2, batches[2])]
    ours = ProduceRequest(transactional_id=None, required_acks=-1, timeout=30000,
                          topics=[("rawcap.packets", parts)])
    plain = AiokafkaProduceRequest(
        transactional_id=None, required_acks=-1, timeout=30000,
        topics=[("rawcap.packets", [(p, b.to_bytes()) for p, b in parts])])
    for version in range(3, 8):
        versions = {0: (version, version)}
        assert bytes(ours.prepare(versions).encode()) == plain.prepare(versions).encode()
    # Mixed content (a generic batch among ours) keeps aiokafka's own encoding.
    mixed = ProduceRequest(None, -1, 30000, [("t", [(0, batches[0].to_bytes())])])
    assert mixed.prepare(_VERSIONS).encode() == AiokafkaProduceRequest(
        None, -1, 30000, [("t", [(0, batches[0].to_bytes())])]).prepare(_VERSIONS).encode()


class _Writer:
    """Stands in for the connection's StreamWriter: records what would go to the socket."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.raw: list[bytes | memoryview] = []

    def write(self, data: bytes | memoryview) -> None:
        assert isinstance(data, (bytes, memoryview))
        self.raw.append(data)
        self.sent.append(bytes(data))


def _wire(request: Any) -> _Writer:
    from aiokafka.conn import AIOKafkaConnection

    conn = AIOKafkaConnection("127.0.0.1", 1, client_id="rawcap-test")
    conn._writer = _Writer()
    conn._versions = {0: (3, 7)}
    conn.send(request).close()  # never awaited: no broker behind this connection
    writer: _Writer = conn._writer
    return writer


async def test_connection_writes_the_same_bytes() -> None:
    """What AIOKafkaConnection.send puts on the wire for our request equals aiokafka's own
    encoding of the same request (header, size prefix and all)."""
    b = RecordsBatch(b"node-a", [((b"x" * 70_000, os.urandom(300_000)), 1234), ((b"y" * 9,), 1235)])
    b._set_producer_state(42, 1, 7)
    ours = _wire(ProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b)])])).sent
    theirs = _wire(AiokafkaProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b.to_bytes())])])).sent
    assert len(ours) == len(theirs) == 1
    assert ours[0] == theirs[0]
    assert int.from_bytes(ours[0][:4], "big") == len(ours[0]) - 4


async def test_framed_value_is_sent_in_place_with_the_same_bytes() -> None:
    """A plain one-block batch (rawcap.kafka.Framed) gets the request laid out in the room
    around it: the bytes on the wire are aiokafka's, and the value is not copied."""
    block = os.urandom(500_000)
    framed = Framed.around(memoryview(block))
    assert framed.prepend(b"RCB1-header")
    value = framed.value()
    b = RecordsBatch(b"node-a", [((value,), 1234)])
    b._set_producer_state(42, 1, 7)
    wires = []
    for attempt in range(2):  # ours, twice (a retry re-lays the prefix in the same room)
        w = _wire(ProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b)])]))
        (raw,) = w.raw
        assert isinstance(raw, memoryview) and raw.obj is framed, attempt
        wires.append(w.sent[0])
    plain = AiokafkaProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b.to_bytes())])])
    wires.append(_wire(plain).sent[0])
    assert wires[0] == wires[1] == wires[2]
    assert bytes(value) == b"RCB1-header" + block  # the value itself is untouched


async def test_a_group_less_consumer_learns_a_topics_partitions(stack: Any) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap)
    await consumer.start()
    try:
        assert not consumer.partitions_for_topic(topics.CONTROL)  # what needs the private call
        assert await consumer_partitions(consumer, topics.CONTROL, wait_s=0) == {0}
        assert await consumer_partitions(consumer, topics.PACKETS) == set(range(6))
        # One metadata refresh, no wait, for a topic that does not exist (a metadata request
        # naming it would make a broker with auto.create.topics.enable create it).
        missing = f"rawcap.no-such-{uuid.uuid4().hex}"
        with anyio.fail_after(10):
            assert await consumer_partitions(consumer, missing, wait_s=0) == set()
    finally:
        await consumer.stop()


async def test_an_admin_client_counts_brokers_and_sends_a_request(stack: Any) -> None:
    """The two admin internals (topic replication follows the broker count; the local stack's
    ACLs go through ``admin_send``) against the single-broker stack."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.metadata import MetadataRequest

    from rawcap.kafka._compat import admin_broker_count, admin_send

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        assert admin_broker_count(admin) == 1
        resp = await admin_send(admin, MetadataRequest([topics.CONTROL], allow_auto_topic_creation=False))
        assert [t[1] for t in resp.topics] == [topics.CONTROL]
    finally:
        await admin.close()
