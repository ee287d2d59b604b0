"""rawcap.kafka._codec: the wire protocol as functions of bytes. Fetch responses and record
batches decode to what aiokafka's own decoder gives (values as views, no copies), and the
record batches of the produce path encode to what aiokafka's builder lays out."""

from __future__ import annotations

import os
import random
import struct

import pytest
from aiokafka.protocol import fetch as _fetch
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c

from rawcap.kafka._codec import (
    RECORD_BATCH,
    Unsupported,
    crc32c,
    parse_fetch_response,
    parse_record_batches,
    record_batch,
    value_batch,
    varint,
)


def _batch(base: int, records: list[tuple[int, bytes | None, bytes | None]], *, codec: int = 0,
           log_append_ts: int | None = None) -> bytes:
    """One v2 record batch at offset ``base`` of (timestamp, key, value), built by aiokafka."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
                                  producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for i, (ts, key, value) in enumerate(records):
        b.append(i, timestamp=ts, key=key, value=value, headers=[("h", b"x" * i)])
    buf = b.build()
    buf[0:8] = struct.pack(">q", base)
    if log_append_ts is not None:  # what a LogAppendTime topic's broker does (CRC not checked)
        (attrs,) = struct.unpack_from(">h", buf, 21)
        struct.pack_into(">h", buf, 21, attrs | 0x08)
        struct.pack_into(">q", buf, 35, log_append_ts)
    return bytes(buf)


def _aiokafka_records(data: bytes, fetch_offset: int) -> list[tuple[int, int, bytes | None, bytes | None]]:
    out, mr = [], MemoryRecords(data)
    while (batch := mr.next_batch()) is not None:
        for r in batch:
            if r.offset >= fetch_offset:
                out.append((r.offset, r.timestamp, r.key, r.value))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_record_batches_decode_as_aiokafka_does(seed: int) -> None:
    rng = random.Random(seed)
    data, base, ends = b"", rng.randrange(0, 1 << 40), []
    for _ in range(rng.randrange(1, 6)):
        recs = [(rng.randrange(1 << 41), rng.choice([None, b"", b"node-1"]),
                 rng.choice([None, b"", rng.randbytes(rng.randrange(1, 3000))]))
                for _ in range(rng.randrange(1, 8))]
        data += _batch(base, recs)
        ends.append((len(data), base + len(recs)))  # (end in the record set, next offset)
        base += len(recs) + rng.randrange(0, 3)  # compaction leaves holes between batches
    first = struct.unpack_from(">q", data)[0]
    fetch_offset = first + rng.randrange(0, 4)
    cut = len(data) - rng.choice([0, 0, 1, 30, 70])  # a size-limited fetch ends in a partial batch
    want = _aiokafka_records(data[:cut], fetch_offset)
    got, nxt = parse_record_batches(memoryview(data[:cut]), fetch_offset)
    assert [(r.offset, r.timestamp, r.key, None if r.value is None else bytes(r.value)) for r in got] == want
    assert all(isinstance(r.value, memoryview) for r in got if r.value is not None)
    assert nxt == max([fetch_offset] + [n for end, n in ends if end <= cut])


def test_next_offset_skips_past_the_last_complete_batch() -> None:
    one = _batch(10, [(1, None, b"a"), (2, None, b"b")])
    two = _batch(12, [(3, None, b"c")])
    assert parse_record_batches(memoryview(one + two), 10)[1] == 13
    assert parse_record_batches(memoryview(one + two[:-1]), 10)[1] == 12  # partial second batch
    assert parse_record_batches(memoryview(two[:20]), 12) == ([], 12)  # nothing complete yet


def test_log_append_time_uses_the_batch_max_timestamp() -> None:
    got, _ = parse_record_batches(memoryview(_batch(0, [(5, None, b"v")], log_append_ts=777)), 0)
    assert [r.timestamp for r in got] == [777]


def test_compressed_or_old_batches_are_left_to_aiokafka() -> None:
    with pytest.raises(Unsupported, match="compressed"):
        parse_record_batches(memoryview(_batch(0, [(1, None, b"v" * 500)] * 3, codec=1)), 0)
    old = bytearray(_batch(0, [(1, None, b"v")]))
    old[16] = 1  # magic
    with pytest.raises(Unsupported, match="magic"):
        parse_record_batches(memoryview(bytes(old)), 0)
    bad = bytearray(_batch(0, [(1, None, b"v")]))
    struct.pack_into(">i", bad, 57, 2)  # claims two records, holds one
    with pytest.raises(Unsupported):
        parse_record_batches(memoryview(bytes(bad)), 0)


@pytest.mark.parametrize("version", range(4, 12))
def test_fetch_response_fields_per_version(version: int) -> None:
    records = _batch(0, [(1, b"k", b"value")])
    part: list[object] = [3, 0, 42, 41]
    if version >= 5:
        part.append(0)  # log_start_offset
    part.append([(7, 8)])  # aborted transactions
    if version >= 11:
        part.append(-1)  # preferred read replica
    part.append(records)
    other = [4, 6, 0, 0, *part[4:-1], None]  # another partition: error, no records
    top: list[object] = [0, 0, 0] if version >= 7 else [0]
    cls = getattr(_fetch, f"FetchResponse_v{version}")
    buf = b"pad" + cls(*top, [("rawcap.packets", [part, other])]).encode()
    got = parse_fetch_response(buf, 3, version)
    assert [(t, p, e, None if r is None else bytes(r), hw) for t, p, e, r, hw in got] == [
        ("rawcap.packets", 3, 0, records, 42), ("rawcap.packets", 4, 6, None, 0)
    ]
    with pytest.raises(Unsupported, match=r"truncated|past the end"):
        parse_fetch_response(buf[: len(buf) - 10], 3, version)


# -- the produce side: record batches as aiokafka's builder lays them out -------------------
def _aiokafka_batch(key: bytes, records: list[tuple[bytes, int]], producer: tuple[int, int, int]) -> bytes:
    size = sum(len(v) for v, _ in records) + 64 * len(records) + 4096
    b = DefaultRecordBatchBuilder(2, 0, 0, *producer, batch_size=size)
    for i, (value, ts) in enumerate(records):
        assert b.append(i, ts, key=key, value=value, headers=[]) is not None
    return bytes(b.build())


def test_crc32c_matches_aiokafka() -> None:
    for data in (b"", b"123456789", os.urandom(100_003)):
        assert crc32c(data) == calc_crc32c(data)
    # Incremental over pieces, as record_batch uses it.
    data = os.urandom(5000)
    assert crc32c(data[3000:], crc32c(data[:3000])) == calc_crc32c(data)


@pytest.mark.parametrize("count", [1, 2, 8])
def test_record_batch_equals_aiokafka_builder(count: int) -> None:
    cases = [
        (b"node-a", 1 << 20, 1_796_000_000_123, (4711, 3, 99)),
        (b"n", 63, 0, (0, 0, 0)),
        (b"k" * 200, 200_000, 2**40, (-1, -1, -1)),  # varints of several bytes
    ]
    for key, size, ts, producer in cases:
        # Timestamps that go back as well as forth: deltas are signed varints.
        records = [(os.urandom(size // count + i), ts + (-1) ** i * 3 * i) for i in range(count)]
        chunks, total = record_batch(key, [((v[:7], memoryview(v)[7:]), t) for v, t in records], producer)
        got = b"".join(chunks)
        assert len(got) == total >= RECORD_BATCH.size + sum(len(v) for v, _ in records)
        assert got == _aiokafka_batch(key, records, producer)
        # And aiokafka reads it back as the same valid records.
        batch = DefaultRecordBatch(bytearray(got))
        assert batch.validate_crc()
        assert [(r.key, r.value, r.timestamp) for r in batch] == [(key, v, t) for v, t in records]
        assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == producer
        # And the fetch side's decoder reads back what the produce side wrote.
        decoded, nxt = parse_record_batches(memoryview(got), 0)
        want = [(key, v, t) for v, t in records]
        assert [(r.key, bytes(r.value or b""), r.timestamp) for r in decoded] == want
        assert nxt == count


@pytest.mark.parametrize("count", [1, 3, 2000])
def test_value_batch_equals_aiokafka_builder(count: int) -> None:
    """The joined layout of many small values (rawcap.flows): the same bytes as aiokafka's."""
    rng = random.Random(count)
    records = [(os.urandom(rng.choice((0, 1, 60, 127, 128, 500, 9000, 20_000))),
                1_796_000_000_000 + rng.randrange(-70_000, 70_000)) for _ in range(count)]
    chunks, total = value_batch(b"node-7", [v for v, _ in records], [t for _, t in records], (77, 1, 5))
    got = b"".join(chunks)
    assert len(got) == total
    assert got == _aiokafka_batch(b"node-7", records, (77, 1, 5))


def test_varint_is_kafkas_zigzag() -> None:
    for n in [*range(-20_000, 20_000), 2**31, -(2**31), 2**62, -(2**63)]:
        z, want = (n << 1) ^ (n >> 63), bytearray()
        while z >= 0x80:
            want.append((z & 0x7F) | 0x80)
            z >>= 7
        want.append(z)
        assert varint(n) == bytes(want), n


def test_record_batch_values_are_not_copied() -> None:
    value = memoryview(bytearray(os.urandom(1000)))
    chunks, _ = record_batch(b"k", [((value,), 1)], (1, 2, 3))
    assert any(c is value for c in chunks)
