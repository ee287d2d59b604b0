"""Fewer copies on aiokafka's receive path: a stream reader for big fetch responses, and
a fetcher whose record values are views into the response (:class:`PartitionFetcher`).

aiokafka reads each response with ``StreamReader.readexactly(size)``. The stock reader
appends every 256 KiB the socket gives into one ``bytearray`` (a copy, and more copies as the
array grows), copies the frame out into ``bytes`` when it is complete, and pauses and resumes
the socket (two epoll calls) for every chunk past its 64 KiB limit. For an export that reads
hundreds of MB of 8 MiB fetch responses, that machinery was ~35% of the event loop's CPU
(py-spy, ``bench/export``). :class:`ChunkReader` keeps the chunks as the socket handed them
and joins a frame once (one copy; none when a frame is one chunk), which is all aiokafka's
connection asks of its reader.

:func:`install` makes aiokafka's connections use it, only after checking that this aiokafka
reads its sockets the way this module expects (``AIOKafkaConnection.connect`` builds an
``asyncio.StreamReader``, ``_read`` only calls ``readexactly``); otherwise it leaves aiokafka
alone and returns False. ``RAWCAP_NO_FAST_KAFKA_READER=1`` turns both off.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import struct
import types
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, SupportsIndex

__all__ = ("ChunkReader", "FetchedRecord", "PartitionFetcher", "Unsupported", "install")

#: Pause the socket only when this much waits unread (a fetch response is read whole anyway;
#: the broker sends the next one only when asked).
LIMIT = 32 * 1024 * 1024
#: Frames from this size on are received in place (fetch responses); smaller ones are joined.
_IN_PLACE_MIN = 1024 * 1024
#: What one socket read takes when no frame is being received in place (asyncio's own size).
_SCRATCH = 256 * 1024

_new_frame: Any = None
try:
    _new_frame = importlib.import_module("rawcap._fastpcap").new_frame
except (ImportError, AttributeError):  # not built: frames are joined from the chunks (one copy)
    pass


class ChunkReader(asyncio.StreamReader):
    """A ``StreamReader`` for ``readexactly`` only: chunks are kept as received and a frame
    is joined once. The line/``read`` methods are not supported (aiokafka does not use them)."""

    if TYPE_CHECKING:  # asyncio.StreamReader's own state, which the stubs do not declare
        _eof: bool
        _exception: BaseException | None
        _transport: Any
        _paused: bool
        _limit: int

        def _wakeup_waiter(self) -> None: ...

        async def _wait_for_data(self, func_name: str) -> None: ...

    def __init__(self, limit: int = LIMIT, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(limit=max(limit, LIMIT), loop=loop)
        self._chunks: deque[bytes] = deque()
        self._off = 0  # bytes of the first chunk already read
        self._have = 0  # bytes in the chunks not read yet
        # A big frame being received in place (_buffered_protocol): a writable view of the
        # bytes object (None once it is full) and how much of it is filled.
        self._frame_view: memoryview | None = None
        self._frame_fill = 0
        self._scratch = memoryview(bytearray(_SCRATCH))
        self.in_place = False  # set by a protocol that reads the socket into get_buffer()

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        assert not self._eof, "feed_data after feed_eof"
        chunk = bytes(data)  # the transport's bytes as they are (no copy); a scratch view: a copy
        if not chunk:
            return
        self._chunks.append(chunk)
        self._have += len(chunk)
        self._wakeup_waiter()
        if self._transport is not None and not self._paused and self._have > 2 * self._limit:
            try:
                self._transport.pause_reading()
            except NotImplementedError:
                self._transport = None
            else:
                self._paused = True

    def _maybe_resume_transport(self) -> None:
        if self._paused and self._have <= self._limit:
            self._paused = False
            self._transport.resume_reading()

    def at_eof(self) -> bool:
        return bool(self._eof) and not self._have

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        if self.in_place and n >= _IN_PLACE_MIN and self._have < n and _new_frame is not None:
            return await self._read_in_place(n)
        while self._have < n:
            if self._eof:
                partial = b"".join(self._chunks)[self._off :]
                self._chunks.clear()
                self._have = self._off = 0
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait_for_data("readexactly")
        chunks, off = self._chunks, self._off
        first = chunks[0]
        if len(first) - off >= n:  # within the first chunk (a 4-byte size, a small frame)
            data = first if off == 0 and len(first) == n else first[off : off + n]
            off += n
        else:
            parts: list[bytes | memoryview] = [memoryview(first)[off:]]
            need = n - (len(first) - off)
            chunks.popleft()
            while len(chunks[0]) <= need:
                need -= len(chunks[0])
                parts.append(chunks.popleft())
                if not need:
                    break
            else:
                parts.append(memoryview(chunks[0])[:need])
            off = need
            first = chunks[0] if chunks else b""
            data = b"".join(parts)
        if off and off == len(first):
            chunks.popleft()
            off = 0
        self._off = off
        self._have -= n
        self._maybe_resume_transport()
        return data

    async def _read_in_place(self, n: int) -> bytes:
        """A frame of ``n`` bytes received straight into the bytes object returned: what is
        buffered already is copied in, the rest the socket writes there (get_buffer)."""
        assert _new_frame is not None
        frame, view = _new_frame(n)
        fill = 0
        for i, chunk in enumerate(self._chunks):
            part = memoryview(chunk)[self._off if i == 0 else 0 :]
            view[fill : fill + len(part)] = part
            fill += len(part)
        self._chunks.clear()
        self._off = self._have = 0
        self._maybe_resume_transport()
        self._frame_view, self._frame_fill = (view if fill < n else None), fill
        try:
            while self._frame_fill < n:
                if self._exception is not None:
                    raise self._exception
                if self._eof:
                    raise asyncio.IncompleteReadError(frame[: self._frame_fill], n)
                await self._wait_for_data("readexactly")
        finally:
            self._frame_view = None
            view.release()
        return frame

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the socket's next bytes go: the rest of the frame being received, else a
        scratch buffer whose bytes :meth:`buffer_updated` feeds as a chunk."""
        if self._frame_view is not None:
            return self._frame_view[self._frame_fill :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._frame_view is not None:
            self._frame_fill += nbytes
            if self._frame_fill == len(self._frame_view):
                self._frame_view = None  # full: the socket's next bytes go to the scratch buffer
                self._wakeup_waiter()
        else:
            self.feed_data(self._scratch[:nbytes])

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("rawcap._kafkaio.ChunkReader serves readexactly() only")

    read = readline = readuntil = _unsupported


def _buffered_protocol(base: type) -> type:
    """aiokafka's protocol as an ``asyncio.BufferedProtocol``: the transport reads the socket
    into :meth:`ChunkReader.get_buffer` (for a big frame, the frame itself) instead of
    handing over a new ``bytes`` per read."""

    class BufferedKafkaProtocol(base, asyncio.BufferedProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            reader = self._stream_reader
            if isinstance(reader, ChunkReader):
                reader.in_place = True

        def get_buffer(self, sizehint: int) -> memoryview:
            return self._stream_reader.get_buffer(sizehint)

        def buffer_updated(self, nbytes: int) -> None:
            self._stream_reader.buffer_updated(nbytes)

    return BufferedKafkaProtocol


class _AsyncioWithChunkReader(types.ModuleType):
    """``asyncio`` as aiokafka.conn sees it, with :class:`ChunkReader` as ``StreamReader``."""

    StreamReader = ChunkReader

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


_installed = False


def install() -> bool:
    """Make aiokafka's connections (made from now on, in this process) read with
    :class:`ChunkReader`; True if in effect."""
    global _installed
    if _installed:
        return True
    if os.environ.get("RAWCAP_NO_FAST_KAFKA_READER"):
        return False
    try:
        from aiokafka import conn
    except ImportError:
        return False
    cls = getattr(conn, "AIOKafkaConnection", None)
    connect = getattr(getattr(cls, "connect", None), "__code__", None)
    read = getattr(getattr(cls, "_read", None), "__code__", None)
    if (
        getattr(conn, "asyncio", None) is not asyncio
        or connect is None
        or read is None
        or "StreamReader" not in connect.co_names
        or "readexactly" not in read.co_names
        or {"read", "readline", "readuntil"} & set(read.co_names)
    ):
        return False  # an aiokafka that reads differently: leave it as it is
    conn.asyncio = _AsyncioWithChunkReader("asyncio")
    proto = getattr(conn, "AIOKafkaProtocol", None)
    if (
        _new_frame is not None
        and isinstance(proto, type)
        and issubclass(proto, asyncio.StreamReaderProtocol)
        and "AIOKafkaProtocol" in connect.co_names
    ):
        conn.AIOKafkaProtocol = _buffered_protocol(proto)
    _installed = True
    return True


# -- zero-copy Fetch -------------------------------------------------------------------------
# aiokafka decodes a fetch response by reading its record set out of a BytesIO (a copy of
# each partition's records) and then each record value out of that (another copy), in the
# event loop's thread with the GIL held: for an export, two copies of every byte it reads.
# PartitionFetcher sends aiokafka's own FetchRequest over aiokafka's own connection, but its
# response is decoded here, lazily: record values come back as memoryviews into the response
# frame as it was read. Anything this decoder does not expect (an error code, a compressed
# or pre-v2 record batch, a malformed frame, a transport error) raises Unsupported, and the
# caller goes back to aiokafka's consumer for that partition.


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
