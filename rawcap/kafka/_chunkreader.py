"""Fewer copies on aiokafka's receive path: a stream reader for big fetch responses (the
fetcher whose record values are views into the response is ``rawcap.kafka._fetch``).

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
import types
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex

__all__ = (
    "ChunkReader",
    "FetchedRecord",
    "PartitionFetcher",
    "Unsupported",
    "install",
    "parse_fetch_response",
    "parse_record_batches",
)

#: Pause the socket only when this much waits unread (a fetch response is read whole anyway;
#: the broker sends the next one only when asked).
LIMIT = 32 * 1024 * 1024
#: Frames from this size on are received in place (fetch responses); smaller ones are joined.
_IN_PLACE_MIN = 1024 * 1024
#: What one socket read takes when no frame is being received in place (asyncio's own size).
_SCRATCH = 256 * 1024

_new_frame: Any = None
try:
    _new_frame = importlib.import_module("rawcap.kafka._recvbuf").new_frame
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
        raise NotImplementedError("rawcap.kafka._chunkreader.ChunkReader serves readexactly() only")

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


# The fetch response decoder and aiokafka-connection fetcher live in rawcap.kafka._fetch; these
# names stay importable from here, where they were first.
from ._fetch import (  # noqa: E402
    FetchedRecord,
    PartitionFetcher,
    Unsupported,
    _LazyFetchResponse,  # noqa: F401
    parse_fetch_response,
    parse_record_batches,
)
