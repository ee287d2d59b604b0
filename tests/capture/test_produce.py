"""The shipper's prebuilt record batches (rawcap/kafka/_produce.py) are what aiokafka would send."""

from __future__ import annotations

import os

from aiokafka.protocol.produce import ProduceRequest as AiokafkaProduceRequest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from rawcap.kafka._produce import Framed, OneRecordBatch, ProduceRequest, crc32c, install_produce_request

_VERSIONS = {0: (3, 7)}  # what a Kafka 4 broker offers for Produce


def _aiokafka_batch(key: bytes, value: bytes, ts: int, producer: tuple[int, int, int]) -> bytes:
    b = DefaultRecordBatchBuilder(2, 0, 0, *producer, batch_size=len(value) + 1024)
    assert b.append(0, ts, key=key, value=value, headers=[]) is not None
    return bytes(b.build())


def test_crc32c_matches_aiokafka() -> None:
    for data in (b"", b"123456789", os.urandom(100_003)):
        assert crc32c(data) == calc_crc32c(data)
    # Incremental over pieces, as OneRecordBatch uses it.
    data = os.urandom(5000)
    assert crc32c(data[3000:], crc32c(data[:3000])) == calc_crc32c(data)


def test_one_record_batch_equals_aiokafka_builder() -> None:
    cases = [
        (b"node-a", os.urandom(1 << 20), 1_796_000_000_123, (4711, 3, 99)),
        (b"n", b"x" * 63, 0, (0, 0, 0)),
        (b"k" * 200, os.urandom(200_000), 2**40, (-1, -1, -1)),  # varints of several bytes
    ]
    for key, value, ts, producer in cases:
        ours = OneRecordBatch(key, [value[:7], memoryview(value)[7:]], ts)
        ours._set_producer_state(*producer)
        assert ours.size() >= len(value)
        got = ours.to_bytes()
        assert got == _aiokafka_batch(key, value, ts, producer)
        assert len(ours) == len(got)
        # And aiokafka reads it back as one valid record.
        batch = DefaultRecordBatch(bytearray(got))
        assert batch.validate_crc()
        (rec,) = list(batch)
        assert (rec.key, rec.value, rec.timestamp) == (key, value, ts)
        assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == producer


def test_build_is_stable_for_retries() -> None:
    b = OneRecordBatch(b"k", [b"v" * 10], 5)
    b._set_producer_state(1, 2, 3)
    first = b._build().chunks
    b._set_producer_state(9, 9, 9)  # a later state must not change bytes already sent
    assert b._build().chunks is first


def test_request_encoding_equals_aiokafka() -> None:
    batches = []
    for i, size in enumerate((100, 1 << 20)):
        b = OneRecordBatch(f"node-{i}".encode(), [os.urandom(size)], 1000 + i)
        b._set_producer_state(7, 0, i)
        b._build()
        batches.append(b)
    topics = [("rawcap.packets", [(0, batches[0]), (5, batches[1])])]
    ours = ProduceRequest(transactional_id=None, required_acks=-1, timeout=30000, topics=topics)
    plain = AiokafkaProduceRequest(
        transactional_id=None, required_acks=-1, timeout=30000,
        topics=[("rawcap.packets", [(p, b.to_bytes()) for p, b in topics[0][1]])])
    for version in range(3, 8):
        versions = {0: (version, version)}
        assert bytes(ours.prepare(versions).encode()) == plain.prepare(versions).encode()
    # Mixed content (a generic batch among ours) keeps aiokafka's own encoding.
    mixed = ProduceRequest(None, -1, 30000, [("t", [(0, batches[0].to_bytes())])])
    assert mixed.prepare(_VERSIONS).encode() == AiokafkaProduceRequest(
        None, -1, 30000, [("t", [(0, batches[0].to_bytes())])]).prepare(_VERSIONS).encode()


def test_install_takes_effect() -> None:
    from aiokafka.producer import sender

    assert install_produce_request() is True
    assert sender.ProduceRequest is ProduceRequest


class _Writer:
    """Stands in for the connection's StreamWriter: records what would go to the socket."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.raw: list[bytes | memoryview] = []

    def write(self, data: bytes | memoryview) -> None:
        assert isinstance(data, (bytes, memoryview))
        self.raw.append(data)
        self.sent.append(bytes(data))


async def test_connection_writes_the_same_bytes() -> None:
    """What AIOKafkaConnection.send puts on the wire for our request equals aiokafka's own
    encoding of the same request (header, size prefix and all)."""
    from aiokafka.conn import AIOKafkaConnection

    b = OneRecordBatch(b"node-a", [b"x" * 70_000, os.urandom(300_000)], 1234)
    b._set_producer_state(42, 1, 7)
    wires = []
    for req in (ProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b)])]),
                AiokafkaProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b.to_bytes())])])):
        conn = AIOKafkaConnection("127.0.0.1", 1, client_id="rawcap-test")
        conn._writer = _Writer()
        conn._versions = {0: (3, 7)}
        fut = conn.send(req)
        fut.close()  # never awaited: no broker behind this connection
        wires.append(conn._writer.sent)
    assert len(wires[0]) == len(wires[1]) == 1
    assert wires[0][0] == wires[1][0]
    size = int.from_bytes(wires[0][0][:4], "big")
    assert size == len(wires[0][0]) - 4


async def test_framed_value_is_sent_in_place_with_the_same_bytes() -> None:
    """A plain one-block batch (capture/_batcher.Framed) gets the request laid out in the
    room around it: the bytes on the wire are aiokafka's, and the value is not copied."""
    from aiokafka.conn import AIOKafkaConnection

    block = os.urandom(500_000)
    framed = Framed.around(memoryview(block))
    assert framed.prepend(b"RCB1-header")
    value = framed.value()
    b = OneRecordBatch(b"node-a", [value], 1234)
    b._set_producer_state(42, 1, 7)
    wires = []
    for attempt, req in enumerate((ProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b)])]),
                                   ProduceRequest(None, -1, 30000, [("rawcap.packets", [(3, b)])]),
                                   AiokafkaProduceRequest(None, -1, 30000,
                                                          [("rawcap.packets", [(3, b.to_bytes())])]))):
        conn = AIOKafkaConnection("127.0.0.1", 1, client_id="rawcap-test")
        conn._writer = _Writer()
        conn._versions = {0: (3, 7)}
        conn.send(req).close()
        (raw,) = conn._writer.raw
        if attempt < 2:  # ours, twice (a retry re-lays the prefix in the same room)
            assert isinstance(raw, memoryview) and raw.obj is framed
        wires.append(conn._writer.sent[0])
    assert wires[0] == wires[1] == wires[2]
    assert bytes(value) == b"RCB1-header" + block  # the value itself is untouched
