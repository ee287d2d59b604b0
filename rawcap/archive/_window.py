"""Reading a time window out of the archive: index objects first, then only the byte
ranges of the batches inside the window, in parallel."""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import anyio

from schemas.stream import FRAME, crc32

from ..config import Config
from ._layout import FrameRef, IndexEntry, hour_of
from ._store import ArchiveStore, ObjectMissing

__all__ = ("ArchiveWindow", "iter_window")

log = logging.getLogger("rawcap.archive")


class _Unit(NamedTuple):
    key: str
    start: int
    end: int


def _frame_values(
    data: memoryview, refs: Sequence[FrameRef], start: int, where: str
) -> list[memoryview | None]:
    """The batch values of ``refs`` in a byte range that starts at object offset ``start``."""
    out: list[memoryview | None] = []
    for ref in refs:
        p = ref.pos - start
        if p + FRAME.size > len(data):
            log.warning("archive object %s ends before the frame at %d", where, ref.pos)
            out.append(None)
            continue
        length, crc = FRAME.unpack_from(data, p)
        value = data[p + FRAME.size : p + FRAME.size + length]
        if FRAME.size + length != ref.length or len(value) != length or crc32(value) != crc:
            log.warning("archive object %s: frame at %d fails its length/crc32 check", where, ref.pos)
            out.append(None)
            continue
        out.append(value)
    return out


class ArchiveWindow:
    """Batch values of ``[lo, hi)`` from the archive, as an async iterator.

    Hour by hour: the hour's index objects are read in parallel, the batches that overlap
    the window are chosen from them (repeats of a ``(node, seq, t0, n)`` dropped, in case an
    object was ever written twice under two keys), and ordered the way a Kafka reader would
    see them: each node's batches in archive (offset) order, nodes merged by first packet
    time. Only the byte ranges holding those batches are fetched, by a pool of threads, at
    most ``max_bytes`` ahead of the consumer.
    """

    def __init__(
        self,
        store: ArchiveStore,
        lo: int,
        hi: int,
        nodes: Iterable[str] | None = None,
        *,
        parallel: int = 8,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.lo, self.hi = lo, hi
        self.nodes = sorted(set(nodes)) if nodes else None
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="rawcap-archive-read")
        self._hours: deque[int] | None = None
        self._out: deque[memoryview] = deque()
        self._seen: set[tuple[str, int, int, int]] = set()
        self._closed = False
        self.objects = 0
        self.bytes_read = 0

    def __aiter__(self) -> ArchiveWindow:
        return self

    async def __anext__(self) -> memoryview:
        while not self._out:
            if self._closed or not await self._next_hour():
                raise StopAsyncIteration
        return self._out.popleft()

    async def aclose(self) -> None:
        self._closed = True
        self._out.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _wait(self, fut: Future[Any]) -> Any:
        return await anyio.to_thread.run_sync(fut.result, abandon_on_cancel=True)

    async def _next_hour(self) -> bool:
        if self._hours is None:
            hi_hour = hour_of(max(self.lo, self.hi - 1))
            hours = await self._wait(
                self._pool.submit(self.store.hours_present, hour_of(self.lo) - 1, hi_hour)
            )
            self._hours = deque(hours)
        while self._hours:
            hour = self._hours.popleft()
            if await self._read_hour(hour):
                return True
        return False

    async def _read_hour(self, hour: int) -> bool:
        keys = await self._wait(self._pool.submit(self.store.index_keys, hour, self.nodes))
        futs = [self._pool.submit(self.store.load_index, k) for k in keys]
        entries = [e for e in [await self._wait(f) for f in futs] if e is not None]
        # Per node: the chosen frames in archive order.
        per_node: dict[str, list[tuple[IndexEntry, int]]] = {}
        entries.sort(key=lambda e: (e.node, e.topic, e.partition, e.first_offset))
        for e in entries:
            if e.t1 < self.lo or e.t0 >= self.hi:
                continue
            for i, f in enumerate(e.frames):
                if f.n == 0 or f.t1 < self.lo or f.t0 >= self.hi:
                    continue
                ident = (e.node, f.seq, f.t0, f.n)
                if ident in self._seen:
                    continue
                self._seen.add(ident)
                per_node.setdefault(e.node, []).append((e, i))
        if not per_node:
            return False
        order = _merge_by_time(per_node)
        # Units: runs of consecutive chosen frames of one object, cut at unit_cap bytes.
        unit_cap = max(256 * 1024, min(8 * 1024 * 1024, self.max_bytes // (2 * len(per_node))))
        unit_of: dict[tuple[str, int], int] = {}
        units: list[_Unit] = []
        frames_of: list[list[FrameRef]] = []
        last: dict[str, tuple[int, int]] = {}  # data key -> (frame index, unit) of the last chosen frame
        chosen = sorted(
            ((e, i) for run in per_node.values() for e, i in run), key=lambda x: (x[0].data_key, x[1])
        )
        for e, i in chosen:
            f = e.frames[i]
            prev = last.get(e.data_key)
            if prev is not None and prev[0] == i - 1 and f.pos + f.length - units[prev[1]].start <= unit_cap:
                u = prev[1]
                units[u] = units[u]._replace(end=f.pos + f.length)
            else:
                u = len(units)
                units.append(_Unit(e.data_key, f.pos, f.pos + f.length))
                frames_of.append([])
            frames_of[u].append(f)
            unit_of[(e.data_key, i)] = u
            last[e.data_key] = (i, u)
        # Fetch units in the order the output first needs them; emit in merge order.
        needed = [unit_of[(e.data_key, i)] for e, i in order]
        first_use: dict[int, None] = dict.fromkeys(needed)
        queue = deque(first_use)
        remaining = [len(fs) for fs in frames_of]
        pending: dict[int, Future[Any]] = {}
        ready: dict[int, dict[int, memoryview | None]] = {}
        in_flight = 0

        def submit(u: int) -> None:
            nonlocal in_flight
            unit = units[u]
            pending[u] = self._pool.submit(self._fetch_unit, unit, frames_of[u])
            in_flight += unit.end - unit.start

        for (_e, _i), u in zip(order, needed, strict=True):
            while queue and ((not pending and not ready) or in_flight < self.max_bytes):
                nxt = queue.popleft()
                if nxt not in pending and nxt not in ready:
                    submit(nxt)
            if u not in ready:
                if u not in pending:
                    submit(u)
                ready[u] = await self._wait(pending.pop(u))
            value = ready[u].get(_e.frames[_i].pos)
            if value is not None:
                self._out.append(value)
            remaining[u] -= 1
            if remaining[u] == 0:
                del ready[u]
                in_flight -= units[u].end - units[u].start
        return bool(self._out)

    def _fetch_unit(self, unit: _Unit, refs: list[FrameRef]) -> dict[int, memoryview | None]:
        try:
            data = self.store.get_range(unit.key, unit.start, unit.end)
        except ObjectMissing:
            log.warning("archive object vanished (retention?): %s", unit.key)
            return {}
        self.objects += 1
        self.bytes_read += len(data)
        values = _frame_values(data, refs, unit.start, unit.key)
        return {r.pos: v for r, v in zip(refs, values, strict=True)}


def _merge_by_time(per_node: dict[str, list[tuple[IndexEntry, int]]]) -> list[tuple[IndexEntry, int]]:
    """Each node's frames in their order, nodes interleaved by first packet time."""
    heap = [(run[0][0].frames[run[0][1]].t0, node, 0) for node, run in per_node.items()]
    heapq.heapify(heap)
    out: list[tuple[IndexEntry, int]] = []
    while heap:
        _t, node, k = heapq.heappop(heap)
        run = per_node[node]
        out.append(run[k])
        if k + 1 < len(run):
            e, i = run[k + 1]
            heapq.heappush(heap, (e.frames[i].t0, node, k + 1))
    return out


def iter_window(cfg: Config, lo_ns: int, hi_ns: int, *, nodes: Iterable[str] | None = None) -> ArchiveWindow:
    """The batch values of ``[lo_ns, hi_ns)`` in ``archive.url`` (``--source archive``)."""
    return ArchiveWindow(ArchiveStore.from_config(cfg), lo_ns, hi_ns, nodes)
