"""Kafka's wire protocol as functions of bytes: requests built, responses parsed, record
batches laid out and read. No sockets, no clock, no aiokafka (``_wire.py`` drives the
socket; ``_compat.py`` hands the produce side to aiokafka's sender).

Only versions without tagged fields are spoken (Fetch v4-v11, ListOffsets v1-v5, Metadata
v1-v8, ApiVersions v0, Produce v3-v7); every broker since Kafka 2.1 has them. Anything a
parser does not expect (an error code, a compressed or pre-v2 record batch, a malformed
frame) raises :class:`Unsupported`: the caller leaves that read to aiokafka.

The v2 record batch layout (``RECORD_BATCH_FIELDS``) is declared once, for the fetch side's
decoder (:func:`parse_record_batches`) and the produce side's encoder (:func:`record_batch`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

__all__ = (
    "API_FETCH",
    "API_LIST_OFFSETS",
    "API_METADATA",
    "API_PRODUCE",
    "API_VERSIONS",
    "EARLIEST",
    "LATEST",
    "RECORD_BATCH",
    "RECORD_BATCH_FIELDS",
    "VERSIONS",
    "Broker",
    "FetchedPartition",
    "FetchedRecord",
    "Framed",
    "TopicMetadata",
    "Unsupported",
    "crc32c",
    "fetch_request",
    "in_place",
    "list_offsets_request",
    "metadata_request",
    "murmur2",
    "node_partition",
    "parse_api_versions",
    "parse_fetch_response",
    "parse_list_offsets",
    "parse_metadata",
    "parse_record_batches",
    "produce_request",
    "record_batch",
    "request_header",
    "string",
    "value_batch",
    "varint",
)

API_PRODUCE, API_FETCH, API_LIST_OFFSETS, API_METADATA, API_VERSIONS = 0, 1, 2, 3, 18
#: The versions encoded and decoded by the plaintext client (none of them has tagged fields).
VERSIONS: Final = {API_FETCH: (4, 11), API_LIST_OFFSETS: (1, 5), API_METADATA: (1, 8)}
EARLIEST, LATEST = -2, -1
#: As aiokafka's consumer is set up for rawcap (``rawcap.kafka.consumer_kwargs``): a fetch
#: returns up to one largest batch of the topic per partition, answers within 500 ms.
FETCH_MAX_WAIT_MS = 500

_I8, _I16, _I32, _I64 = struct.Struct(">b"), struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">q")
#: A fetch response's partition header: partition, error code, high watermark, last stable offset.
_PART_V4 = struct.Struct(">ihqq")


class Unsupported(Exception):
    """This read is for aiokafka's consumer to do (the reason is the message)."""


class FetchedRecord(NamedTuple):
    offset: int
    timestamp: int  # ms (the record's, or the broker's for LogAppendTime topics)
    key: bytes | None
    value: memoryview | None


def crc32c(data: Any, value: int = 0) -> int:
    """CRC-32C (the record batch checksum), chainable over pieces; SSE4.2 / ARMv8 (the
    ``crc32c`` package, imported on first use: its import pulls in ``importlib.metadata``,
    which the fetch side has no use for)."""
    global _crc32c
    if _crc32c is None:
        from crc32c import crc32c as _crc32c
    return int(_crc32c(data, value))


_crc32c: Any = None


# -- partitioning ----------------------------------------------------------------------------
def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``, aiokafka's
    ``partitioner.murmur2``), as a signed 32-bit int: what the default partitioner hashes
    record keys with."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    if tail:
        h ^= int.from_bytes(data[length - tail :], "little")
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def node_partition(node: str, partitions: int) -> int:
    """The partition the default (murmur2) partitioner gives a node's key."""
    return (murmur2(node.encode()) & 0x7FFFFFFF) % partitions


# -- primitives ------------------------------------------------------------------------------
_VARINT1: Final = tuple(bytes((z,)) for z in range(0x80))

def string(s: str | None) -> bytes:
    """A Kafka STRING (or a null one): int16 length, UTF-8 bytes."""
    if s is None:
        return _I16.pack(-1)
    b = s.encode()
    return _I16.pack(len(b)) + b


def varint(n: int) -> bytes:
    """Kafka's zig-zag varint."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:  # the common one- and two-byte ones without a loop
        return _VARINT1[z] if z < 0x80 else bytes(((z & 0x7F) | 0x80, z >> 7))
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def request_header(api: int, version: int, correlation_id: int, client_id: bytes) -> bytes:
    """Request header v1 (api key, version, correlation id, client id as an encoded string)."""
    return struct.pack(">hhi", api, version, correlation_id) + client_id


# -- requests --------------------------------------------------------------------------------
def metadata_request(version: int, topic: str) -> bytes:
    """Metadata v1-v8 of one topic, no auto-creation, no authorized operations."""
    body = _I32.pack(1) + string(topic)
    if version >= 4:
        body += b"\0"  # allow_auto_topic_creation
    if version >= 8:
        body += b"\0\0"  # include cluster / topic authorized operations
    return body


def list_offsets_request(version: int, topic: str, partitions: Iterable[int], timestamp: int) -> bytes:
    """ListOffsets v1-v5: the offset at ``timestamp`` (or EARLIEST / LATEST) of each partition,
    read_uncommitted (what aiokafka's consumer asks for by default)."""
    parts = list(partitions)
    body = _I32.pack(-1)  # replica_id
    if version >= 2:
        body += _I8.pack(0)  # isolation_level: read_uncommitted
    body += _I32.pack(1) + string(topic) + _I32.pack(len(parts))
    for p in parts:
        body += _I32.pack(p)
        if version >= 4:
            body += _I32.pack(-1)  # current_leader_epoch: unknown
        body += _I64.pack(timestamp)
    return body


def fetch_request(version: int, topic: str, partition: int, offset: int, *, partition_bytes: int,
                  max_bytes: int) -> bytes:
    """Fetch v4-v11 of one partition from ``offset``, sessionless (as aiokafka sends it)."""
    body = struct.pack(">iiiib", -1, FETCH_MAX_WAIT_MS, 1, max_bytes, 0)
    if version >= 7:
        body += struct.pack(">ii", 0, -1)  # session_id, session_epoch: no fetch session
    body += _I32.pack(1) + string(topic) + _I32.pack(1) + _I32.pack(partition)
    if version >= 9:
        body += _I32.pack(-1)  # current_leader_epoch: unknown
    body += _I64.pack(offset)
    if version >= 5:
        body += _I64.pack(-1)  # log_start_offset: a consumer's
    body += _I32.pack(partition_bytes)
    if version >= 7:
        body += _I32.pack(0)  # forgotten_topics_data
    if version >= 11:
        body += string("")  # rack_id
    return body


# -- record batches (v2) ---------------------------------------------------------------------
#: A v2 record batch up to its first record: base offset, batch length (from the epoch on),
#: partition leader epoch, magic, crc32c (of everything after it), attributes, last offset
#: delta, base and max timestamp, producer id and epoch, base sequence, record count.
RECORD_BATCH_FIELDS: Final = (
    ("base_offset", "q"),
    ("batch_length", "i"),
    ("partition_leader_epoch", "i"),
    ("magic", "b"),
    ("crc", "I"),
    ("attributes", "h"),
    ("last_offset_delta", "i"),
    ("base_timestamp", "q"),
    ("max_timestamp", "q"),
    ("producer_id", "q"),
    ("producer_epoch", "h"),
    ("base_sequence", "i"),
    ("record_count", "i"),
)
RECORD_BATCH: Final = struct.Struct(">" + "".join(f for _, f in RECORD_BATCH_FIELDS))  # 61 bytes
#: The part before the crc, and the part the crc covers (through the record count).
_BATCH_HEAD: Final = struct.Struct(">" + "".join(f for _, f in RECORD_BATCH_FIELDS[:5]))
_BATCH_FIXED: Final = struct.Struct(">" + "".join(f for _, f in RECORD_BATCH_FIELDS[5:]))
#: Bytes of the batch not counted by ``batch_length`` (base offset and the length itself).
_LENGTH_OFFSET: Final = 12
_COMPRESSION, _LOG_APPEND_TIME, _CONTROL = 0x07, 0x08, 0x20
_NO_HEADERS: Final = b"\x00"  # a record's header count 0, as a varint
assert RECORD_BATCH.size == _BATCH_HEAD.size + _BATCH_FIXED.size == 61



# -- responses -------------------------------------------------------------------------------
class _Reader:
    """Big-endian fields of a response, in order."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def _take(self, s: struct.Struct) -> int:
        (v,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return int(v)

    def i8(self) -> int:
        return self._take(_I8)

    def i16(self) -> int:
        return self._take(_I16)

    def i32(self) -> int:
        return self._take(_I32)

    def i64(self) -> int:
        return self._take(_I64)

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        if self.pos + n > len(self.buf):
            raise struct.error("string runs past the end")
        s = bytes(self.buf[self.pos : self.pos + n]).decode()
        self.pos += n
        return s

    def skip_int32_array(self) -> None:
        n = self.i32()
        self.pos += 4 * max(n, 0)


class Broker(NamedTuple):
    host: str
    port: int


class TopicMetadata(NamedTuple):
    brokers: dict[int, Broker]
    #: partition -> leader broker id
    leaders: dict[int, int]


def parse_metadata(version: int, buf: bytes | memoryview, pos: int, topic: str) -> TopicMetadata:
    """The brokers and the partition leaders of ``topic`` from a Metadata v1-v8 response;
    Unsupported for a topic or partition error (no such topic, no leader right now)."""
    r = _Reader(buf, pos)
    try:
        if version >= 3:
            r.i32()  # throttle_time_ms
        brokers: dict[int, Broker] = {}
        for _ in range(r.i32()):
            node, host, port = r.i32(), r.string(), r.i32()
            r.string()  # rack
            brokers[node] = Broker(host or "", port)
        if version >= 2:
            r.string()  # cluster_id
        r.i32()  # controller_id
        leaders: dict[int, int] | None = None
        for _ in range(r.i32()):
            err, name = r.i16(), r.string()
            r.i8()  # is_internal
            parts: dict[int, int] = {}
            for _ in range(r.i32()):
                perr, index, leader = r.i16(), r.i32(), r.i32()
                if version >= 7:
                    r.i32()  # leader_epoch
                r.skip_int32_array()  # replicas
                r.skip_int32_array()  # isr
                if version >= 5:
                    r.skip_int32_array()  # offline_replicas
                if name == topic and (perr or leader not in brokers):
                    raise Unsupported(f"{topic}[{index}]: error code {perr}, leader {leader}")
                parts[index] = leader
            if version >= 8:
                r.i32()  # topic_authorized_operations
            if name == topic:
                if err:
                    raise Unsupported(f"metadata of {topic}: error code {err}")
                leaders = parts
    except struct.error:
        raise Unsupported("truncated metadata response") from None
    if not leaders:
        raise Unsupported(f"no partitions of {topic} in the metadata")
    return TopicMetadata(brokers, leaders)


def parse_list_offsets(
    version: int, buf: bytes | memoryview, pos: int, topic: str
) -> dict[int, tuple[int, int]]:
    """partition -> (timestamp, offset) from a ListOffsets v1-v5 response (-1, -1: no record at
    or after the timestamp asked for); Unsupported for an error code."""
    r = _Reader(buf, pos)
    out: dict[int, tuple[int, int]] = {}
    try:
        if version >= 2:
            r.i32()  # throttle_time_ms
        for _ in range(r.i32()):
            name = r.string()
            for _ in range(r.i32()):
                index, err, ts, offset = r.i32(), r.i16(), r.i64(), r.i64()
                if version >= 4:
                    r.i32()  # leader_epoch
                if name != topic:
                    continue
                if err:
                    raise Unsupported(f"{topic}[{index}]: offset lookup error code {err}")
                out[index] = (ts, offset)
    except struct.error:
        raise Unsupported("truncated offsets response") from None
    return out


def parse_api_versions(buf: bytes | memoryview, pos: int) -> dict[int, tuple[int, int]]:
    """api key -> (lowest, highest version) from an ApiVersions v0 response."""
    r = _Reader(buf, pos)
    try:
        err = r.i16()
        if err:
            raise Unsupported(f"ApiVersions error code {err}")
        ranges = {}
        for _ in range(r.i32()):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            ranges[key] = (lo, hi)
    except struct.error:
        raise Unsupported("truncated ApiVersions response") from None
    return ranges


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """A zigzag varint (Kafka's record fields) at ``pos``: (value, position after it)."""
    b = buf[pos]
    pos += 1
    raw, shift = b & 0x7F, 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        shift += 7
    return (raw >> 1) ^ -(raw & 1), pos


class FetchedPartition(NamedTuple):
    """One partition of a Fetch response: ``records`` is a view into the response."""

    topic: str
    partition: int
    error: int
    records: memoryview | None
    highwater: int


def parse_fetch_response(buf: bytes, pos: int, version: int) -> list[FetchedPartition]:
    """Each partition of a Fetch response v4-v11 whose body starts at ``buf[pos]``."""
    view = memoryview(buf)
    try:
        pos += 4  # throttle_time_ms
        if version >= 7:
            (err,) = _I16.unpack_from(view, pos)
            if err:
                raise Unsupported(f"fetch response error code {err}")
            pos += 6  # error_code, session_id
        out: list[FetchedPartition] = []
        (ntopics,) = _I32.unpack_from(view, pos)
        pos += 4
        for _ in range(ntopics):
            (tlen,) = _I16.unpack_from(view, pos)
            topic = bytes(view[pos + 2 : pos + 2 + tlen]).decode()
            pos += 2 + tlen
            (nparts,) = _I32.unpack_from(view, pos)
            pos += 4
            for _ in range(nparts):
                partition, err, hw, _lso = _PART_V4.unpack_from(view, pos)
                pos += _PART_V4.size + (8 if version >= 5 else 0)  # log_start_offset
                (naborted,) = _I32.unpack_from(view, pos)
                pos += 4 + 16 * max(naborted, 0)
                pos += 4 if version >= 11 else 0  # preferred_read_replica
                (rlen,) = _I32.unpack_from(view, pos)
                pos += 4
                if rlen > len(view) - pos:
                    raise Unsupported("record set runs past the end of the response")
                records = view[pos : pos + rlen] if rlen >= 0 else None
                pos += max(rlen, 0)
                out.append(FetchedPartition(topic, partition, err, records, hw))
        return out
    except struct.error:
        raise Unsupported("truncated fetch response") from None


def parse_record_batches(records: memoryview, fetch_offset: int) -> tuple[list[FetchedRecord], int]:
    """The records at or after ``fetch_offset`` in a record set (v2 batches, uncompressed; a
    partial batch at the end, as a size-limited fetch leaves it, is ignored), and the offset
    to fetch next (``fetch_offset`` if no batch is complete)."""
    out: list[FetchedRecord] = []
    pos, end, nxt = 0, len(records), fetch_offset
    try:
        while end - pos >= RECORD_BATCH.size:
            (base, blen, _epoch, magic, _crc, attrs, last_delta, base_ts, max_ts, _pid, _pep, _seq,
             count) = RECORD_BATCH.unpack_from(records, pos)
            if magic != 2:
                raise Unsupported(f"record batch magic {magic}")
            stop = pos + _LENGTH_OFFSET + blen
            if stop > end:
                break  # the partial batch a size limit cut
            if attrs & _COMPRESSION:
                raise Unsupported("compressed record batch")
            if not attrs & _CONTROL:
                _records(records, pos + RECORD_BATCH.size, stop, count, base, base_ts,
                         max_ts if attrs & _LOG_APPEND_TIME else None, fetch_offset, out)
            nxt = max(nxt, base + last_delta + 1)
            pos = stop
    except (IndexError, struct.error):
        raise Unsupported("malformed record batch") from None
    return out, nxt


def _records(buf: memoryview, pos: int, stop: int, count: int, base: int, base_ts: int,
             log_append_ts: int | None, fetch_offset: int, out: list[FetchedRecord]) -> None:
    """Append the ``count`` records of one batch (headers skipped) that lie at or after
    ``fetch_offset``: a fetch returns whole batches, so the first one may start earlier."""
    for _ in range(count):
        length, pos = _varint(buf, pos)
        rec_end = pos + length
        if length < 0 or rec_end > stop:
            raise Unsupported("record runs past its batch")
        ts_delta, p = _varint(buf, pos + 1)  # after the record's attributes byte
        off_delta, p = _varint(buf, p)
        klen, p = _varint(buf, p)
        key = bytes(buf[p : p + klen]) if klen >= 0 else None
        p += max(klen, 0)
        vlen, p = _varint(buf, p)
        value = buf[p : p + vlen] if vlen >= 0 else None
        if p + max(vlen, 0) > rec_end:
            raise Unsupported("record value runs past the record")
        offset = base + off_delta
        if offset >= fetch_offset:
            ts = log_append_ts if log_append_ts is not None else base_ts + ts_delta
            out.append(FetchedRecord(offset, ts, key, value))
        pos = rec_end
    if pos != stop:
        raise Unsupported("record batch length does not match its records")


# -- produce ---------------------------------------------------------------------------------
def record_batch(key: bytes, records: Sequence[tuple[Sequence[Any], int]],
                 producer: tuple[int, int, int]) -> tuple[list[Any], int]:
    """A v2 record batch (uncompressed, no headers) of ``records``: each ``(value pieces,
    timestamp ms)``, all with ``key``, stamped with ``producer`` (id, epoch, base sequence).
    Returns the batch as a list of pieces, values by reference (not copied), and its size."""
    ts0 = records[0][1]
    parts: list[Any] = []
    body_len = 0
    crc_parts: list[Any] = []
    max_ts = ts0
    key_part = varint(len(key)) + key
    for i, (pieces, ts) in enumerate(records):
        vlen = sum(len(p) for p in pieces)
        # attributes, timestamp delta, offset delta, key, value length (the value follows)
        head = b"\x00" + varint(ts - ts0) + varint(i) + key_part + varint(vlen)
        head = varint(len(head) + vlen + len(_NO_HEADERS)) + head
        parts.append(head)
        parts.extend(pieces)
        parts.append(_NO_HEADERS)
        body_len += len(head) + vlen + len(_NO_HEADERS)
        max_ts = max(max_ts, ts)
    fixed = _BATCH_FIXED.pack(0, len(records) - 1, ts0, max_ts, *producer, len(records))
    crc = crc32c(fixed)
    for p in parts:
        crc = crc32c(p, crc)
    crc_parts = [fixed, *parts]
    total = _BATCH_HEAD.size + len(fixed) + body_len
    return [_BATCH_HEAD.pack(0, total - _LENGTH_OFFSET, -1, 2, crc), *crc_parts], total


def value_batch(key: bytes, values: Sequence[bytes], timestamps: Sequence[int],
                producer: tuple[int, int, int]) -> tuple[list[Any], int]:
    """:func:`record_batch` of one-piece values (``values[i]`` at ``timestamps[i]`` ms), the
    same bytes, laid out as one ``bytes`` with one crc32c pass: for many small values
    (``rawcap.flows`` records), where a piece and a crc32c call per value cost more than a copy."""
    ts0, key_part = timestamps[0], varint(len(key)) + key
    out: list[bytes] = []
    for i, (value, ts) in enumerate(zip(values, timestamps, strict=True)):
        head = b"\x00" + varint(ts - ts0) + varint(i) + key_part + varint(len(value))
        out += (varint(len(head) + len(value) + 1), head, value, _NO_HEADERS)
    body = b"".join(out)
    fixed = _BATCH_FIXED.pack(0, len(values) - 1, ts0, max(timestamps), *producer, len(values))
    total = _BATCH_HEAD.size + len(fixed) + len(body)
    crc = crc32c(body, crc32c(fixed))
    return [_BATCH_HEAD.pack(0, total - _LENGTH_OFFSET, -1, 2, crc), fixed, body], total


def produce_request(transactional_id: str | None, acks: int, timeout_ms: int,
                    topics: Sequence[tuple[str, Sequence[tuple[int, int, Sequence[Any]]]]]) -> list[Any]:
    """Produce v3-v7 (one schema) as pieces: ``topics`` are ``(topic, [(partition, batch
    size, batch pieces)])``."""
    out: list[Any] = [string(transactional_id), struct.pack(">hi", acks, timeout_ms), _I32.pack(len(topics))]
    for topic, parts in topics:
        out += (string(topic), _I32.pack(len(parts)))
        for partition, size, pieces in parts:
            out += (_I32.pack(partition), _I32.pack(size))
            out += pieces
    return out


class Framed(bytearray):
    """A batch value with free room around it, so that a produce request can be laid out in
    the same buffer instead of copied (:func:`in_place`): ``ROOM`` bytes before the value,
    one after. The value is ``self[start:end]``.

    The capture agent frames a plain (incompressible) batch of one ring block: there the
    value is the size of the block, and joining it into the request was the shipper's
    biggest copy. It is built with ``+=``, which copies without zero-filling the buffer first."""

    ROOM = 16 * 1024

    start: int
    end: int

    @classmethod
    def around(cls, block: memoryview) -> Framed:
        buf = cls()
        buf += bytes(cls.ROOM)
        buf += block
        buf.append(0)
        buf.start, buf.end = cls.ROOM, len(buf) - 1
        return buf

    def prepend(self, head: bytes) -> bool:
        """Put ``head`` right before the value (keeping half the room for Kafka)."""
        if len(head) > self.start - self.ROOM // 2:
            return False
        self.start -= len(head)
        self[self.start:self.start + len(head)] = head
        return True

    def value(self) -> memoryview:
        return memoryview(self)[self.start:self.end]


def in_place(chunks: Sequence[Any]) -> memoryview | None:
    """A whole request (``chunks``, size prefix first) laid out inside its value's own
    buffer, when it ends with one record whose value is a :class:`Framed` one: the pieces
    before the value go into the room in front, the record's trailer after it, and nothing
    of the value is copied. None when the request is not of that shape.

    Rewriting the room is safe because a batch is in one request at a time: a retry only
    follows the end of the previous attempt (an error response, or a closed connection
    whose transport dropped what it had queued)."""
    value = chunks[-2] if len(chunks) >= 2 else None
    if not (isinstance(value, memoryview) and isinstance(value.obj, Framed)
            and chunks[-1] == _NO_HEADERS):
        return None
    buf = value.obj
    if len(value) != buf.end - buf.start:
        return None  # not the framed value itself (a slice of it)
    head = b"".join(chunks[:-2])
    if len(head) > buf.start:
        return None
    first = buf.start - len(head)
    buf[first:buf.start] = head
    buf[buf.end] = 0  # _NO_HEADERS
    return memoryview(buf)[first:buf.end + 1]
