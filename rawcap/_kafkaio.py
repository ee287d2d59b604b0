"""Fewer copies on aiokafka's receive path: a stream reader for big fetch responses.

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
alone and returns False. ``RAWCAP_NO_FAST_KAFKA_READER=1`` turns it off.
"""

from __future__ import annotations

import asyncio
import os
import types
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex

__all__ = ("ChunkReader", "install")

#: Pause the socket only when this much waits unread (a fetch response is read whole anyway;
#: the broker sends the next one only when asked).
LIMIT = 32 * 1024 * 1024


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

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        assert not self._eof, "feed_data after feed_eof"
        chunk = bytes(data)  # the transport's bytes as they are (no copy)
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

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("rawcap._kafkaio.ChunkReader serves readexactly() only")

    read = readline = readuntil = _unsupported


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
    _installed = True
    return True
