"""``rawcap pcap export``: a time window as pcapng (or classic pcap), in time order.

Three threads, each owning its stage, with bounded queues between them:

- the event loop (main thread) fetches from Kafka (or another source), decodes batch
  headers and merges nodes by time (:meth:`rawcap.window.WindowReader.items`); a batch that
  goes out whole is handed on still compressed;
- the converter (:class:`_Converter`) takes the items in order, decompresses those batches
  (zstd releases the GIL) and builds their blocks (the compiled converter releases it too;
  the Python path does one EPB header ``pack`` per packet, the packet's bytes referenced,
  not copied), so the loop keeps fetching meanwhile;
- the writer (:class:`_BackgroundWriter`) hands each ~4 MiB chunk to the file in one call.

Output goes to a temporary name beside the target and is renamed on success, so a reader
never sees a half-written file under the real name; ``-o -`` streams to stdout for ``|
tshark -r -``. A write error (disk full) ends the export with a one-line error.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from rawcap.hooks import hook
from rawcap.window import RawBatch, WindowReader, WPacket
from schemas import decompress_body
from schemas.errors import BatchError, ConfigError, RawcapError

from ._sinks import PcapngSink, PcapSink

if TYPE_CHECKING:
    from rawcap.workloads import Workloads

__all__ = ("OutputFile", "write_capture")

_FLUSH_BYTES = 4 * 1024 * 1024
#: Items (compressed batches, packet lists) queued for the converter: enough to ride out
#: one fetch response's burst, a few MiB of memory.
_AHEAD = 16


class OutputFile:
    """``-o FILE`` (temp name + rename on success) or ``-o -`` (stdout)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._tmp: str | None = None
        self.fh: BinaryIO
        if target == "-":
            self.fh = sys.stdout.buffer
            return
        path = Path(target)
        parent = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise ConfigError(f"output path {target} is a directory")
        if not parent.is_dir():
            raise ConfigError(f"output path {target}: directory {parent} does not exist")
        try:
            fd, self._tmp = _create_temp(parent, f".{path.name}.", ".part")
        except OSError as exc:
            raise ConfigError(f"output path {target} is not writable: {exc.strerror}") from None
        self.fh = os.fdopen(fd, "wb")

    def commit(self) -> None:
        if self._tmp is None:
            self.fh.flush()
            return
        self.fh.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.target)
        self._tmp = None

    def abort(self) -> None:
        if self._tmp is not None:
            self.fh.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None


def _create_temp(parent: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` (a new file, mode 0600, exclusive create), without importing
    ``tempfile`` (which imports ``shutil``, ``random``, ``bz2`` and ``lzma`` at start-up)."""
    for _ in range(100):
        name = os.path.join(parent, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", os.path.join(parent, prefix))


async def write_capture(
    reader: WindowReader,
    out: BinaryIO,
    *,
    fmt: str = "pcapng",
    comment_node: bool = False,
    workloads: Workloads | None = None,
    match: Callable[[bytes | memoryview, int, int], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    snaplen: int = 262144,
) -> int:
    """Stream the reader's packets into ``out``; returns the number of packets written.
    ``workloads``: every EPB gets an ``opt_comment`` ``node=N src=... dst=...`` (pcapng)."""
    sink = PcapSink(snaplen) if fmt == "pcap" else PcapngSink(snaplen, comment_node, workloads)
    t0 = time.perf_counter()
    writer = _BackgroundWriter(out)
    conv = _Converter(sink, writer)
    # The hot loop makes millions of short-lived tracked objects (tuples, memoryviews) and no
    # reference cycles: the cyclic collector would spend ~20% of the export rescanning them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        total = await _convert(reader, conv, match, progress)
        await writer.close()
    finally:
        # After an error or a cancel (SIGTERM, Ctrl-C). The writer's queue is emptied first,
        # so that a converter blocked on it goes on and ends.
        writer.abort(wait=0)
        conv.abort()
        writer.abort()
        if gc_was_enabled:
            gc.enable()
    if hook("export-stats"):
        loop, process = time.thread_time(), time.process_time()
        print(
            f"rawcap: export stats: {time.perf_counter() - t0:.2f} s in write_capture; CPU s: "
            f"event loop {loop:.2f} (start-up included), converter {conv.cpu:.2f}, "
            f"writer {writer.cpu:.2f}, other threads (Kafka fetch) "
            f"{max(0.0, process - loop - conv.cpu - writer.cpu):.2f}, process {process:.2f}",
            file=sys.stderr,
        )
    return total


async def _convert(
    reader: WindowReader,
    conv: _Converter,
    match: Callable[[bytes | memoryview, int, int], bool] | None,
    progress: Callable[[int, int], None] | None,
) -> int:
    total = 0

    async def settle() -> None:
        """Account for what the converter finished (in order), report corrupt batches."""
        nonlocal total
        for item, n, nbytes, last_ts, exc, inflating in conv.results():
            if exc is not None:
                # Nothing of a corrupt batch reached the output, not even the IDB of an
                # interface it was the first to use: a later batch describes it again.
                await reader.corrupt_batch(item, exc, inflating=inflating)
                continue
            if nbytes:
                reader.stats.node(item.header.node).bytes += nbytes
            total += n
            if progress is not None:
                progress(total, last_ts)

    async for item in reader.items(match=match, inflate=False):
        if isinstance(item, RawBatch) or item:
            await conv.put(item)
            await settle()
    await conv.close()
    await settle()
    return total


#: What the converter says about one item: (item, packets, packet bytes of a RawBatch, last
#: timestamp, the BatchError of a corrupt batch or None, whether it failed to decompress).
_Result = tuple[Any, int, int, int, "BatchError | None", bool]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake_soon(waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None) -> None:
    """From a worker thread: resolve the future the event loop waits on (if it still runs)."""
    if waiter is not None:
        loop, fut = waiter
        try:
            loop.call_soon_threadsafe(_wake, fut)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


class _LoopQueue(queue.Queue[Any]):
    """A bounded queue from the event loop to a worker thread. When it is full, :meth:`aput`
    waits on a future that the worker resolves as it takes the next item, where
    ``anyio.to_thread.run_sync(q.put, item)`` sent a pool thread to block in ``put``: one
    thread hop and two wake-ups per full queue, hundreds per export (the converter is the
    slower side, so the queue is full most of the time)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        waiter, self._waiter = self._waiter, None
        _wake_soon(waiter)
        return item

    async def aput(self, item: Any) -> None:
        """``put`` for the event loop (one producer): waits without blocking the loop."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.put_nowait(item)
                return
            except queue.Full:
                pass
            fut = loop.create_future()
            self._waiter = (loop, fut)
            try:
                # The worker may have taken an item between the first try and the line above
                # (and seen no waiter): try once more before waiting.
                self.put_nowait(item)
                return
            except queue.Full:
                await fut
            finally:
                self._waiter = None


class _Finished:
    """Set once by a worker thread as it ends; awaited by the event loop (no thread joins)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def set(self) -> None:
        with self._lock:
            self._set = True
            waiter, self._waiter = self._waiter, None
        _wake_soon(waiter)

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._set:
                return
            fut = loop.create_future()
            self._waiter = (loop, fut)
        await fut


class _Converter:
    """One thread that takes the reader's items in order: decompresses whole batches and
    builds their blocks (``sink.batch``; the compiled path runs without the GIL), formats
    packet lists (``sink.packets``), and hands ~4 MiB chunks to the writer.

    The sink (interface ids, IDBs) is touched by this thread only, one item after the other,
    so the output is the same as a sequential export's; a corrupt batch is undone here
    (its blocks and the interfaces it introduced) before the next item, and reported back
    through :meth:`results` for the event loop to count and send to the DLQ. At most
    ``_AHEAD`` items wait, so memory stays bounded; an error other than a corrupt batch
    (a write error) stops the thread and is raised by the next :meth:`put` or :meth:`close`.
    """

    def __init__(self, sink: PcapngSink | PcapSink, writer: _BackgroundWriter) -> None:
        self._sink, self._writer = sink, writer
        header = sink.header()
        self._parts: list[Any] = [header]
        self._size = len(header)
        self._jobs = _LoopQueue(maxsize=_AHEAD)  # of list[WPacket] | RawBatch | None
        self._done: deque[_Result] = deque()
        self._exc: BaseException | None = None
        self._aborted = False
        self.cpu = 0.0  # seconds of CPU the thread used (the export-stats test hook)
        self._finished = _Finished()
        self._t = threading.Thread(target=self._run, name="rawcap-pcap-convert", daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.cpu = time.thread_time()
            self._finished.set()

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                break
            if self._exc is not None or self._aborted:
                continue  # drain, so that a blocked put() returns
            try:
                self._done.append(self._one(item))
            except BaseException as exc:
                self._exc = exc
        if self._exc is None and not self._aborted:
            try:
                self._writer.put_sync(self._parts)
            except BaseException as exc:
                self._exc = exc
        self._parts = []

    def _one(self, item: list[WPacket] | RawBatch) -> _Result:
        if isinstance(item, RawBatch):
            res, added = self._batch(item)
        else:
            added = self._sink.packets(item, self._parts)
            res = (item, len(item), 0, item[-1].ts_ns, None, False)
        self._size += added
        if self._size >= _FLUSH_BYTES:
            self._writer.put_sync(self._parts)
            self._parts, self._size = [], 0
        return res

    def _batch(self, item: RawBatch) -> tuple[_Result, int]:
        """The blocks of a whole batch into the chunk (inflated inside the C converter when it
        can, else decompressed first) and the output bytes added; a corrupt batch leaves
        nothing behind (not even the IDBs of interfaces it was the first to use)."""
        sink, parts, h = self._sink, self._parts, item.header
        mark = len(parts)
        sink.begin_batch()
        try:
            done = sink.compressed_batch(h, item.body, parts)
            if done is None:
                try:
                    body = decompress_body(h, item.body)
                except BatchError as exc:
                    return (item, 0, 0, 0, exc, True), 0
                done = sink.batch(h, body, parts)
        except BatchError as exc:
            del parts[mark:]
            sink.forget_batch()
            return (item, 0, 0, 0, exc, False), 0
        n, nbytes, added = done
        return (item, n, nbytes, h.last_ns, None, False), added

    async def put(self, item: list[WPacket] | RawBatch | None) -> None:
        """Queue an item (``None``: the end); waits while ``_AHEAD`` items are queued."""
        if self._exc is not None:
            raise self._exc
        await self._jobs.aput(item)

    def results(self) -> list[_Result]:
        """The items finished since the last call, in order."""
        done, out = self._done, []
        while done:
            out.append(done.popleft())
        return out

    async def close(self) -> None:
        """Finish every queued item and hand the last chunk to the writer; re-raise an error."""
        await self.put(None)
        await self._finished.wait()
        if self._exc is not None:
            raise self._exc

    def abort(self) -> None:
        """Stop the thread without converting what is still queued (after an error)."""
        if self._t.is_alive():
            self._aborted = True
            _drop_queued(self._jobs)
            self._t.join(10)  # CPU-bound: ends within the item in hand


class _BackgroundWriter:
    """Writes chunks in a thread while the next ones are built (``write`` releases the GIL);
    at most a few chunks wait, so memory stays bounded. A write error other than a closed
    pipe (disk full, I/O error) becomes a one-line :class:`RawcapError`."""

    def __init__(self, out: BinaryIO) -> None:
        self._q = _LoopQueue(maxsize=3)  # of list[Any] | None
        self._exc: BaseException | None = None
        self._aborted = False
        self.cpu = 0.0  # seconds of CPU the thread used (the export-stats test hook)
        self._finished = _Finished()
        self._t = threading.Thread(target=self._run, args=(out,), name="rawcap-pcap-writer", daemon=True)
        self._t.start()

    def _run(self, out: BinaryIO) -> None:
        try:
            self._loop(out)
        finally:
            self.cpu = time.thread_time()
            self._finished.set()

    def _loop(self, out: BinaryIO) -> None:
        while True:
            parts = self._q.get()
            if parts is None:
                return
            if self._exc is None and not self._aborted:
                try:
                    if len(parts) <= 64:  # a few big blocks (the compiled path): no join copy
                        out.writelines(parts)
                    else:
                        out.write(b"".join(parts))
                except BrokenPipeError as exc:  # the reader went away (| head): not an error
                    self._exc = exc
                except OSError as exc:
                    self._exc = RawcapError(f"cannot write the capture: {exc.strerror or exc}")
                except BaseException as exc:
                    self._exc = exc

    def put_sync(self, parts: list[Any]) -> None:
        """Queue a chunk (blocks while the queue is full); re-raise an earlier write error."""
        if self._exc is not None:
            raise self._exc
        self._q.put(parts)

    async def close(self) -> None:
        """Wait for every chunk to be written; re-raise a write error (disk full, EPIPE)."""
        await self._q.aput(None)
        await self._finished.wait()
        if self._exc is not None:
            raise self._exc

    def abort(self, wait: float = 1.0) -> None:
        """Stop the thread without writing what is still queued (after an error); wait at
        most ``wait`` s for the write in progress. A write into a pipe nobody reads never
        returns, and nothing can interrupt it: the (daemon) thread is then left behind, so
        that Ctrl-C or SIGTERM still ends ``export -o - | stalled-reader`` at once."""
        if self._t.is_alive():
            self._aborted = True
            _drop_queued(self._q)
            self._t.join(wait)


def _drop_queued(q: queue.Queue[Any]) -> None:
    """Empty a worker's queue and send it the ``None`` that ends it (the worker sees its
    owner's ``_aborted`` flag and skips whatever it is holding)."""
    while True:
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                break
        try:
            q.put_nowait(None)
            return
        except queue.Full:  # refilled meanwhile by a converter that is itself ending
            continue
