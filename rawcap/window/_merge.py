"""The k-way merge of a bounded read: every selected node's packets in time order.

Each node's batches are in time order within its lane, so the merge keeps per node only a
small queue of still-compressed batches and the one batch it is emitting from, and merges
nodes with a heap. A packet is released only once every unfinished lane has read past its
timestamp (a lane's *watermark* is the first timestamp of the newest batch read from it),
which makes the merge exact for nodes with their own partition and bounded-skew for nodes
sharing one. A batch that lies wholly inside the window and before every other node's next
packet goes out whole, as a :class:`RawBatch` (no per-packet objects).
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio

from schemas import BatchHeader, Packet, decompress_body, iter_packets
from schemas.errors import BatchError

from ._types import Admitted, Lane, MatchFn, RawBatch, WindowStats, WPacket

__all__ = ("READ_AHEAD_BYTES", "Cursor", "merge")

log = logging.getLogger("rawcap.window")

#: Compressed batches the merge may hold while it reads a shared partition on for a node
#: that has not caught up (beyond it, nodes sharing a partition merge in shipping order).
READ_AHEAD_BYTES = 256 * 1024 * 1024

#: ``fetch(lane)``: the lane's next admitted batches (None: the lane is done).
FetchFn = Callable[[Lane], Awaitable[list[Admitted] | None]]
#: ``corrupt(value, meta, exc)``: count and report a batch whose body is invalid.
CorruptFn = Callable[[bytes | memoryview, dict[str, Any], Exception], Awaitable[None]]


class Cursor:
    """One node's position in the merge: queued (compressed) batches and the current one."""

    __slots__ = ("header", "lane", "meta", "node", "packets", "pending", "pos", "raw", "value")

    def __init__(self, node: str, lane: int) -> None:
        self.node = node
        self.lane = lane
        self.pending: deque[Admitted] = deque()
        self.header: BatchHeader | None = None
        self.meta: dict[str, Any] = {}
        self.value: bytes | memoryview = b""
        self.raw: bytes | memoryview | None = None
        self.packets: list[Packet] | None = None
        self.pos = 0

    def head(self) -> int:
        assert self.header is not None
        return self.header.first_ns if self.packets is None else self.packets[self.pos].ts_ns

    def next_batch(self) -> bool:
        """Move to the next queued batch (not decompressed yet); False when none is queued."""
        while self.pending:
            header, value, off, meta = self.pending.popleft()
            if header.count == 0:
                continue
            self.header, self.value, self.pos, self.meta = header, value, 0, meta
            self.raw = memoryview(value)[off:]
            self.packets = None
            return True
        self.header, self.packets, self.raw = None, None, None
        return False


async def merge(
    lanes: Sequence[Lane],
    fetch: FetchFn,
    corrupt: CorruptFn,
    stats: WindowStats,
    lo: int,
    hi: int,
    *,
    solo: bool,
    node_lanes: dict[str, int],
    match: MatchFn | None = None,
    chunk: int = 4096,
    inflate: bool = True,
) -> AsyncIterator[list[WPacket] | RawBatch]:
    """Packets of ``[lo, hi)`` from every lane in time order, in lists, and whole batches as
    :class:`RawBatch` (``WindowReader.items`` says what that promises).

    ``solo``: one node in one lane, whose batches go out whole whatever the watermarks say.
    ``node_lanes``: nodes asked for by name -> their (Kafka) lane. A partition's watermark
    says nothing about a node that has not shown up in it yet, since partition timestamps
    are not monotonic (other nodes' newer batches, an import of old traffic after live
    traffic). Each such node keeps a watermark of its own and its lane is read on until the
    node catches up, as long as what waits in memory stays under ``READ_AHEAD_BYTES``."""
    marks = [-1] * len(lanes)  # watermark per lane; huge when done
    done = [False] * len(lanes)
    cursors: dict[str, Cursor] = {}
    heap: list[tuple[int, str]] = []
    node_marks = dict.fromkeys(node_lanes, -1)
    capped = False

    def node_limit() -> int:
        lim = 2**64
        for n, i in node_lanes.items():
            if not done[i] and node_marks[n] < lim:
                lim = node_marks[n]
        return lim

    def waiting_bytes() -> int:
        return sum(len(v) for c in cursors.values() for _h, v, _o, _m in c.pending)

    def advance(cur: Cursor) -> None:
        """Done with the cursor's batch: queue its next one in the merge, if any."""
        if cur.next_batch():
            heapq.heappush(heap, (cur.head(), cur.node))

    async def pull(i: int) -> None:
        got = await fetch(lanes[i])
        if got is None:
            done[i] = True
            marks[i] = 2**64
            return
        for header, value, off, meta in got:
            marks[i] = max(marks[i], header.first_ns)
            if off < 0:
                continue
            if header.node in node_marks:
                node_marks[header.node] = max(node_marks[header.node], header.first_ns)
            cur = cursors.get(header.node)
            if cur is None:
                cur = cursors[header.node] = Cursor(header.node, i)
            cur.pending.append((header, value, off, meta))
            if cur.header is None:
                advance(cur)

    for i in range(len(lanes)):
        await pull(i)
    out: list[WPacket] = []
    while True:
        # Lanes behind the head of the merge must read on before anything is released.
        head = heap[0][0] if heap else None
        lagging = [i for i in range(len(lanes)) if not done[i] and (head is None or marks[i] < head)]
        if not lagging and node_lanes and not capped and (head is None or node_limit() < head):
            if waiting_bytes() < READ_AHEAD_BYTES:
                lagging = sorted({i for n, i in node_lanes.items()
                                  if not done[i] and (head is None or node_marks[n] < head)})
            else:
                capped = True
                log.warning("nodes sharing a partition hold over %d MiB in the merge: they "
                            "are merged in shipping order from here on", READ_AHEAD_BYTES >> 20)
        if lagging:
            for i in lagging:
                await pull(i)
            continue
        if not heap:
            break
        _ts, node = heapq.heappop(heap)
        cur = cursors[node]
        h = cur.header
        assert h is not None and cur.raw is not None
        limit = min(heap[0][0] if heap else 2**64, min(marks))
        if node_lanes and not capped:
            limit = min(limit, node_limit())
        st = stats.node(node)
        if cur.packets is None:
            whole = match is None and h.first_ns >= lo and h.last_ns < hi and (h.last_ns <= limit or solo)
            try:
                if inflate or not whole:
                    # zstd releases the GIL: the Kafka fetcher keeps going meanwhile.
                    cur.raw = await anyio.to_thread.run_sync(decompress_body, h, cur.raw)
                if not whole:
                    cur.packets = list(iter_packets(h, cur.raw))
            except BatchError as exc:
                await corrupt(cur.value, {"source": lanes[cur.lane].name, **cur.meta}, exc)
                advance(cur)
                continue
            if whole:
                if out:
                    yield out
                    out = []
                st.packets += h.count
                st.first_ns = h.first_ns if st.first_ns is None else st.first_ns
                st.last_ns = h.last_ns
                yield RawBatch(h, cur.raw, cur.value, cur.meta, lanes[cur.lane].name)
                advance(cur)
                continue
        assert cur.packets is not None
        pk, pos, n, iface = cur.packets, cur.pos, len(cur.packets), h.ifaces
        while pos < n:
            p = pk[pos]
            t = p.ts_ns
            if t > limit and pos > cur.pos:
                break
            pos += 1
            if t < lo or t >= hi:
                continue
            if match is not None and not match(p.data, p.origlen, t):
                continue
            out.append(
                WPacket(
                    t, node, iface.get(p.ifindex, str(p.ifindex)), p.caplen, p.origlen, p.pkttype, p.data
                )
            )
            st.packets += 1
            st.bytes += p.caplen
            if st.first_ns is None:
                st.first_ns = t
            st.last_ns = t
        cur.pos = pos
        if pos < n or cur.next_batch():
            heapq.heappush(heap, (cur.head(), node))
        if len(out) >= chunk:
            yield out
            out = []
    if out:
        yield out
