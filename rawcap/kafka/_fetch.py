"""Fetch responses decoded without copies: record values are ``memoryview`` slices of the
response frame as it was received.

aiokafka decodes a fetch response by reading its record set out of a ``BytesIO`` (a copy of
each partition's records) and then each record value out of that (another copy), in the
event loop's thread with the GIL held: for an export, two copies of every byte it reads.
:func:`parse_fetch_response` and :func:`parse_record_batches` decode a Fetch response v4-v11
lazily instead; anything they do not expect (an error code, a compressed or pre-v2 record
batch, a malformed frame) raises :class:`Unsupported`, and the caller goes back to
aiokafka's consumer for that partition, at the same offset.

Two fetchers use them: :class:`PartitionFetcher` here sends aiokafka's own ``FetchRequest``
over aiokafka's own connection (any security protocol aiokafka speaks), and
``rawcap.kafka._wire.WireFetcher`` its own request over its own plaintext socket (no aiokafka
at all). Both fetch one partition one request ahead, with the same ``start`` / ``next`` /
``cancel`` interface (``rawcap.kafka.Fetcher``).
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import asyncio

__all__ = (
    "FetchedRecord",
    "PartitionFetcher",
    "Unsupported",
    "parse_fetch_response",
    "parse_record_batches",
)


class Unsupported(Exception):
    """This fetch is for aiokafka's consumer to do (the reason is the message)."""


class FetchedRecord(NamedTuple):
    offset: int
    timestamp: int  # ms (the record's, or the broker's for LogAppendTime topics)
    key: bytes | None
    value: memoryview | None


_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_PART_V4 = struct.Struct(">ihqq")  # partition, error_code, high watermark, last stable offset
#: Record batch v2 up to its record count: base offset, length, leader epoch, magic, crc,
#: attributes, last offset delta, base and max timestamp, producer id/epoch, base sequence, count.
_BATCH = struct.Struct(">qiibIhiqqqhii")
_COMPRESSION, _LOG_APPEND_TIME, _CONTROL = 0x07, 0x08, 0x20


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


def parse_fetch_response(
    buf: bytes, pos: int, version: int
) -> list[tuple[str, int, int, memoryview | None]]:
    """(topic, partition, error code, records) of each partition of a Fetch response v4-v11
    whose body starts at ``buf[pos]``; ``records`` is a view into ``buf``."""
    view = memoryview(buf)
    try:
        pos += 4  # throttle_time_ms
        if version >= 7:
            (err,) = _I16.unpack_from(view, pos)
            if err:
                raise Unsupported(f"fetch response error code {err}")
            pos += 6  # error_code, session_id
        out: list[tuple[str, int, int, memoryview | None]] = []
        (ntopics,) = _I32.unpack_from(view, pos)
        pos += 4
        for _ in range(ntopics):
            (tlen,) = _I16.unpack_from(view, pos)
            topic = bytes(view[pos + 2 : pos + 2 + tlen]).decode()
            pos += 2 + tlen
            (nparts,) = _I32.unpack_from(view, pos)
            pos += 4
            for _ in range(nparts):
                partition, err, _hw, _lso = _PART_V4.unpack_from(view, pos)
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
                out.append((topic, partition, err, records))
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
        while end - pos >= _BATCH.size:
            (base, blen, _epoch, magic, _crc, attrs, last_delta, base_ts, max_ts, _pid, _pep, _seq,
             count) = _BATCH.unpack_from(records, pos)
            if magic != 2:
                raise Unsupported(f"record batch magic {magic}")
            stop = pos + 12 + blen
            if stop > end:
                break  # the partial batch a size limit cut
            if attrs & _COMPRESSION:
                raise Unsupported("compressed record batch")
            if not attrs & _CONTROL:
                _records(records, pos + _BATCH.size, stop, count, base, base_ts,
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


class _LazyFetchResponse:
    """Stands in for aiokafka's ``FetchResponse_vN``: keeps the frame, decodes nothing yet.
    ``BytesIO.getvalue()`` of the reader's frame returns that very ``bytes`` (no copy)."""

    API_KEY = 1
    API_VERSION = 0

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos

    @classmethod
    def decode(cls, data: Any) -> _LazyFetchResponse:
        return cls(data.getvalue(), data.tell())


_lazy_structs: dict[type, type] = {}


def _lazy_struct(cls: type) -> type:
    """``cls`` (an aiokafka FetchRequest_vN) answered by a lazy response of that version."""
    sub = _lazy_structs.get(cls)
    if sub is None:
        resp = type(f"LazyFetchResponse_v{cls.API_VERSION}", (_LazyFetchResponse,),  # type: ignore[attr-defined]
                    {"API_VERSION": cls.API_VERSION})  # type: ignore[attr-defined]
        sub = _lazy_structs[cls] = type(f"Lazy{cls.__name__}", (cls,), {"RESPONSE_TYPE": resp})
    return sub


def _lazy_request(base: type) -> type:
    """aiokafka's FetchRequest, prepared as the negotiated version with a lazy response."""

    class LazyFetchRequest(base):
        def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
            struct_ = super().prepare(versions)
            if not 4 <= struct_.API_VERSION <= 11:
                raise Unsupported(f"Fetch v{struct_.API_VERSION}")
            struct_.__class__ = _lazy_struct(type(struct_))
            return struct_

    return LazyFetchRequest


class PartitionFetcher:
    """Fetches one partition, one request ahead: :meth:`next` returns the records of the
    response in flight and sends the request for what follows before it returns, so the
    broker and the network work while the caller decodes. Built by :meth:`create`, which
    returns None when this aiokafka or this consumer's settings are not what it expects."""

    def __init__(self, consumer: Any, tp: Any, request_cls: type) -> None:
        f = consumer._fetcher
        self._client, self._tp, self._cls = consumer._client, tp, request_cls
        self._args = (f._fetch_max_wait_ms, f._fetch_min_bytes, f._fetch_max_bytes, f._isolation_level)
        self._part_bytes = f._max_partition_fetch_bytes
        self._task: asyncio.Task[tuple[list[FetchedRecord], int]] | None = None

    @classmethod
    def create(cls, consumer: Any, tp: Any) -> PartitionFetcher | None:
        if os.environ.get("RAWCAP_NO_FAST_KAFKA_READER"):
            return None
        try:
            from aiokafka.protocol.fetch import FetchRequest

            f = consumer._fetcher
            if f._isolation_level != 0 or not callable(getattr(consumer._client, "send", None)):
                return None  # read_committed filters aborted transactions: aiokafka's job
            fetcher = cls(consumer, tp, _lazy_request(FetchRequest))
        except (ImportError, AttributeError):
            return None
        return fetcher

    def _request(self, offset: int) -> Any:
        tp = self._tp
        return self._cls(*self._args, [(tp.topic, [(tp.partition, offset, self._part_bytes)])])

    async def _fetch(self, offset: int) -> tuple[list[FetchedRecord], int]:
        from aiokafka.errors import KafkaError

        client, tp = self._client, self._tp
        node = client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            raise Unsupported(f"no leader known for {tp}")
        try:
            resp = await client.send(node, self._request(offset))
        except KafkaError as exc:
            raise Unsupported(f"fetch failed: {exc!r}") from None
        if not isinstance(resp, _LazyFetchResponse):
            raise Unsupported("response was decoded by aiokafka")
        for topic, partition, err, records in parse_fetch_response(resp.buf, resp.pos, resp.API_VERSION):
            if topic == tp.topic and partition == tp.partition:
                if err:
                    raise Unsupported(f"partition error code {err}")
                return parse_record_batches(records, offset) if records is not None else ([], offset)
        raise Unsupported("the response does not hold the partition")

    def start(self, offset: int) -> None:
        """Send the fetch for ``offset`` (the first one; :meth:`next` sends the others)."""
        import asyncio  # here: the decoder above is imported before the event loop is (rawcap.kafka._wire)

        self._task = asyncio.ensure_future(self._fetch(offset))

    async def next(self, stop: int) -> tuple[list[FetchedRecord], int]:
        """The records of the fetch in flight and the next offset; fetches on from there
        unless it reached ``stop``. Raises Unsupported (then nothing is in flight)."""
        assert self._task is not None, "start() first"
        task, self._task = self._task, None
        recs, nxt = await task
        if nxt < stop:
            self.start(nxt)
        return recs, nxt

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
