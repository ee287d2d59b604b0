"""rawcap.kafka._chunkreader: the chunk-keeping stream reader gives what asyncio.StreamReader gives."""

from __future__ import annotations

import asyncio
import random

import pytest

from rawcap.kafka import _chunkreader as _kafkaio
from rawcap.kafka._chunkreader import ChunkReader


async def _frames(
    reader: asyncio.StreamReader, data: bytes, cuts: list[int], sizes: list[int]
) -> list[bytes]:
    """Feed ``data`` cut at ``cuts`` while reading frames of ``sizes``."""

    async def feed() -> None:
        prev = 0
        for c in [*cuts, len(data)]:
            reader.feed_data(data[prev:c])
            prev = c
            await asyncio.sleep(0)
        reader.feed_eof()

    task = asyncio.ensure_future(feed())
    out = []
    for n in sizes:
        out.append(await reader.readexactly(n))
    await task
    return out


@pytest.mark.parametrize("seed", range(40))
def test_same_frames_as_streamreader(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 4, 7, 300, 70_000, 300_000]) for _ in range(rng.randrange(1, 30))]
    data = rng.randbytes(sum(sizes) + rng.randrange(0, 10))
    k = min(max(len(data) - 1, 0), rng.randrange(0, 40))
    cuts = sorted(rng.sample(range(1, len(data)), k)) if k else []

    async def both() -> tuple[list[bytes], list[bytes]]:
        return (
            await _frames(asyncio.StreamReader(limit=2**16), data, cuts, sizes),
            await _frames(ChunkReader(limit=2**16), data, cuts, sizes),
        )

    want, got = asyncio.run(both())
    assert got == want
    assert all(type(g) is bytes for g in got)


def test_eof_inside_a_frame_is_incomplete_read() -> None:
    async def run() -> asyncio.IncompleteReadError:
        r = ChunkReader()
        r.feed_data(b"abcdef")
        assert await r.readexactly(2) == b"ab"
        r.feed_data(b"gh")
        r.feed_eof()
        with pytest.raises(asyncio.IncompleteReadError) as err:
            await r.readexactly(10)
        assert r.at_eof()
        return err.value

    exc = asyncio.run(run())
    assert exc.partial == b"cdefgh" and exc.expected == 10


def test_other_read_methods_are_refused() -> None:
    async def run() -> None:
        r = ChunkReader()
        with pytest.raises(NotImplementedError):
            await r.readline()

    asyncio.run(run())


def test_install_takes_this_aiokafka() -> None:
    from aiokafka import conn

    assert _kafkaio.install() is True
    assert conn.asyncio.StreamReader is ChunkReader
    assert conn.asyncio.sleep is asyncio.sleep  # everything else is asyncio's


# -- zero-copy fetch decoding: the same records as aiokafka's own decoder -------------------
import struct  # noqa: E402

from aiokafka.protocol import fetch as _fetch  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402
from aiokafka.record.memory_records import MemoryRecords  # noqa: E402

from rawcap.kafka._chunkreader import Unsupported, parse_fetch_response, parse_record_batches  # noqa: E402


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


def test_lazy_response_keeps_the_frame_without_a_copy() -> None:
    import io

    from rawcap.kafka._chunkreader import _LazyFetchResponse

    frame = b"header" + bytes(1000)
    data = io.BytesIO(frame)
    data.read(6)  # the response header, as aiokafka's connection reads it
    resp = _LazyFetchResponse.decode(data)
    assert resp.buf is frame and resp.pos == 6


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
    assert [(t, p, e, None if r is None else bytes(r)) for t, p, e, r in got] == [
        ("rawcap.packets", 3, 0, records), ("rawcap.packets", 4, 6, None)
    ]
    with pytest.raises(Unsupported, match=r"truncated|past the end"):
        parse_fetch_response(buf[: len(buf) - 10], 3, version)


# -- frames received in place (the buffered protocol's get_buffer / buffer_updated) ----------
async def _frames_in_place(data: bytes, reads: list[int], sizes: list[int]) -> list[bytes]:
    """What a buffered transport does: ask get_buffer(), write up to ``reads[i]`` bytes into
    it, report them with buffer_updated(), while frames of ``sizes`` are read."""
    reader = ChunkReader()
    reader.in_place = True

    async def feed() -> None:
        pos, i = 0, 0
        while pos < len(data):
            buf = reader.get_buffer(-1)
            assert len(buf) > 0  # asyncio treats an empty buffer as a fatal error
            n = min(len(buf), reads[i % len(reads)], len(data) - pos)
            buf[:n] = data[pos : pos + n]
            reader.buffer_updated(n)
            pos += n
            i += 1
            await asyncio.sleep(0)
        reader.feed_eof()

    task = asyncio.ensure_future(feed())
    out = [await reader.readexactly(n) for n in sizes]
    await task
    return out


@pytest.mark.parametrize("seed", range(30))
def test_in_place_frames_equal_joined_frames(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kafkaio, "_IN_PLACE_MIN", 5000)
    rng = random.Random(seed)
    sizes = [rng.choice([4, 4, 100, 4999, 5000, 20_000, 300_000]) for _ in range(rng.randrange(1, 25))]
    data = rng.randbytes(sum(sizes))
    reads = [rng.choice([1, 3, 4096, 70_000, 300_000]) for _ in range(7)]
    got = asyncio.run(_frames_in_place(data, reads, sizes))
    want, pos = [], 0
    for n in sizes:
        want.append(data[pos : pos + n])
        pos += n
    assert got == want
    assert all(type(g) is bytes for g in got)


def test_eof_inside_an_in_place_frame_is_incomplete_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kafkaio, "_IN_PLACE_MIN", 10)

    async def run() -> asyncio.IncompleteReadError:
        r = ChunkReader()
        r.in_place = True
        buf = r.get_buffer(-1)
        buf[:5] = b"abcde"
        r.buffer_updated(5)
        task = asyncio.ensure_future(r.readexactly(100))
        await asyncio.sleep(0)
        buf = r.get_buffer(-1)
        assert len(buf) == 95  # the rest of the frame
        buf[:3] = b"fgh"
        r.buffer_updated(3)
        r.feed_eof()
        with pytest.raises(asyncio.IncompleteReadError) as ei:
            await task
        return ei.value

    exc = asyncio.run(run())
    assert exc.partial == b"abcdefgh" and exc.expected == 100


async def test_install_makes_aiokafka_connections_buffered() -> None:
    from aiokafka import conn

    assert _kafkaio.install()
    assert issubclass(conn.AIOKafkaProtocol, asyncio.BufferedProtocol)
    reader = ChunkReader()
    proto = conn.AIOKafkaProtocol(None, reader, loop=asyncio.get_running_loop())
    assert proto._stream_reader is reader and reader.in_place
