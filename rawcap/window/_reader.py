"""The window reader: ``[lo, hi)`` of some nodes from one source, as packets or batches."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from schemas import BatchHeader, decode_batch, decode_header, iter_packets, topics
from schemas.errors import BatchError, ConfigError

from ..config import Config
from ..timeparse import format_ns
from ._admission import Admission
from ._follow import follow
from ._kafka import DeadLetters, KafkaSource
from ._lanes import ValueLane, local_lanes
from ._merge import merge
from ._types import Admitted, Lane, MatchFn, RawBatch, WindowStats, WPacket

if TYPE_CHECKING:
    from ..kafka import WindowLookup

__all__ = ("WindowReader",)

log = logging.getLogger("rawcap.window")


class WindowReader:
    """Read ``[lo_ns, hi_ns)`` for some nodes (``None``: all) from one source.

    ``source``: ``kafka``, ``local`` (``capture.bufferDir``), ``archive`` or lanes given by
    the caller (``lanes=``, e.g. a snapshot). Use as an async context manager, then iterate
    :meth:`packets` (merged, trimmed), :meth:`items` (the same, whole batches as they are)
    or :meth:`batches` (raw values per node, in order). A corrupt batch is counted, sent to
    ``rawcap.dlq`` when it came from Kafka (``dlq``), and skipped.
    """

    def __init__(
        self,
        cfg: Config,
        lo_ns: int,
        hi_ns: int,
        *,
        nodes: Iterable[str] | None = None,
        source: str = "kafka",
        lanes: Sequence[Lane] | None = None,
        follow: bool = False,
        dlq: bool = True,
        kafka_lookup: WindowLookup | None = None,
    ) -> None:
        if lo_ns > hi_ns:
            raise ConfigError(f"--from ({format_ns(lo_ns)}) is after --to ({format_ns(hi_ns)})")
        self.cfg = cfg
        self.lo, self.hi = lo_ns, (2**63 if follow else hi_ns)
        self.nodes = frozenset(nodes) if nodes else None
        self.source = source
        self.follow = follow
        self.stats = WindowStats()
        self._lanes: list[Lane] = list(lanes or [])
        self._given_lanes = lanes is not None  # a snapshot with no objects gives []
        self._admission = Admission(self.lo, self.hi, self.nodes, self.stats)
        #: the Kafka side: lanes and clients (``kafka_lookup``: the plaintext client's lookup,
        #: started early by the caller; it owns the fetch connections and threads until closed)
        self._kafka: KafkaSource | None = None
        if source == "kafka" and not self._given_lanes:
            self._kafka = KafkaSource(cfg, self.lo, self.nodes, follow=follow, stats=self.stats,
                                      lookup=kafka_lookup)
        elif kafka_lookup is not None:
            kafka_lookup.close()
        self._dead = DeadLetters(cfg) if dlq and source == "kafka" else None

    async def __aenter__(self) -> WindowReader:
        try:
            if self._given_lanes:
                pass
            elif self._kafka is not None:
                self._lanes = list(await self._kafka.open())
            elif self.source == "local":
                self._lanes = list(local_lanes(self.cfg.get("capture.bufferDir"), self.nodes))
            elif self.source == "archive":
                self._lanes = self._archive_lanes()
            else:
                raise ConfigError(
                    f"--source {self.source!r} is invalid: expected kafka, local, archive or snapshot:ID"
                )
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the lanes and clients. What closes synchronously (Kafka lanes, the plaintext
        client's connections and threads) is closed first; what must be awaited (other
        lanes, aiokafka's clients) runs shielded from cancellation, only when there is any:
        the shield alone imports anyio's asyncio backend (~25 ms), which a bounded export
        through the plaintext client has no other use for."""
        kafka_lanes = set(map(id, self._kafka.lanes)) if self._kafka is not None else set()
        rest = [lane for lane in self._lanes if id(lane) not in kafka_lanes]
        if self._kafka is not None:
            self._kafka.close()
        dead = self._dead
        if not rest and not (self._kafka is not None and self._kafka.needs_aclose) and not (
            dead is not None and dead.needs_aclose
        ):
            return
        with anyio.CancelScope(shield=True):
            for lane in rest:
                await lane.aclose()
            if self._kafka is not None:
                await self._kafka.aclose()
            if dead is not None:
                await dead.aclose()

    # -- sources ---------------------------------------------------------------------------
    def _archive_lanes(self) -> list[Lane]:
        """One lane over ``archive.url``: :func:`rawcap.archive.iter_window` yields the
        window's batches each node in archive order, nodes merged by first packet time."""
        from ..archive import iter_window

        nodes = sorted(self.nodes) if self.nodes else None
        return [ValueLane("archive", iter_window(self.cfg, self.lo, self.hi, nodes=nodes))]

    async def check_nodes(self) -> None:
        """Raise for a requested node that never wrote to its partition (a typo, usually)."""
        if self.nodes is None:
            return
        missing = [n for n in self.nodes if n not in self.stats.nodes]
        kafka = self._kafka
        if not missing or kafka is None or not kafka.opened:
            return
        from ..kafka import node_partition

        seen = await kafka.recent_keys()
        for node in sorted(missing):
            if node in seen:
                continue
            part = node_partition(node, kafka.partition_count)
            why = (
                f" (partition {part} was recycled by retention before the window: its data may be gone)"
                if part in kafka.recycled_partitions
                else ""
            )
            raise ConfigError(
                f"unknown node {node!r}: no batches from it in {topics.PACKETS}{why}; "
                f"nodes seen: {', '.join(sorted(seen)) or 'none'}"
            )

    # -- batch admission -------------------------------------------------------------------
    async def _corrupt(self, value: bytes | memoryview, meta: dict[str, Any], exc: Exception) -> None:
        self.stats.corrupt += 1
        log.warning("corrupt batch skipped: %s", exc, extra={k: v for k, v in meta.items() if k != "key"})
        if self._dead is not None:
            await self._dead.send(value, meta, exc)

    async def _fetch(self, lane: Lane) -> list[Admitted] | None:
        """The lane's next values as admitted ``(header, value, body offset, meta)``; when none
        is admitted but the lane moved, one marker with offset -1 carries its watermark."""
        vals = await lane.next_values()
        if vals is None:
            return None
        admission = self._admission
        out: list[Admitted] = []
        for value, meta in vals:
            try:
                header, off = decode_header(value)
            except BatchError as exc:
                if not admission.wanted_key(meta.get("key")):
                    continue  # another node's corrupt batch (Kafka key): not this read's to report
                await self._corrupt(value, meta, exc)
                continue
            if admission.admit(header):
                out.append((header, value, off, meta))
        if vals and not out:
            # Nothing usable, but the lane moved: report the watermark through a marker.
            last = vals[-1][0]
            try:
                h, _ = decode_header(last)
                return [(h, b"", -1, {})]
            except BatchError:
                return []
        return out

    # -- raw batches (snapshots) -----------------------------------------------------------
    async def batches(self) -> AsyncIterator[tuple[BatchHeader, bytes | memoryview]]:
        """Every in-window batch value, lane by lane (each node's batches in order)."""
        for lane in self._lanes:
            while True:
                got = await self._fetch(lane)
                if got is None:
                    break
                for header, value, off, meta in got:
                    if off < 0:
                        continue
                    try:
                        decode_batch(value)
                    except BatchError as exc:
                        await self._corrupt(value, {"source": lane.name, **meta}, exc)
                        continue
                    st = self.stats.node(header.node)
                    st.packets += header.count
                    st.bytes += header.body_len
                    st.first_ns = (
                        header.first_ns if st.first_ns is None else min(st.first_ns, header.first_ns)
                    )
                    st.last_ns = header.last_ns if st.last_ns is None else max(st.last_ns, header.last_ns)
                    yield header, value

    # -- merged packets --------------------------------------------------------------------
    async def packets(
        self, match: MatchFn | None = None, chunk: int = 4096
    ) -> AsyncIterator[list[WPacket]]:
        """Packets of every selected node in time order, trimmed to the window, in lists."""
        if self.follow:
            async for out in follow(self._lanes, self._fetch, self._corrupt, self.stats, self.lo, match):
                yield out
            return
        async for item in self.items(match, chunk):
            if isinstance(item, RawBatch):
                h = item.header
                try:
                    pk = list(iter_packets(h, item.body))
                except BatchError as exc:
                    await self.corrupt_batch(item, exc)
                    continue
                node, ifaces = h.node, h.ifaces
                self.stats.node(node).bytes += sum(p.caplen for p in pk)
                yield [
                    WPacket(
                        p.ts_ns,
                        node,
                        ifaces.get(p.ifindex, str(p.ifindex)),
                        p.caplen,
                        p.origlen,
                        p.pkttype,
                        p.data,
                    )
                    for p in pk
                ]
            else:
                yield item

    async def corrupt_batch(self, batch: RawBatch, exc: Exception, *, inflating: bool = False) -> None:
        """For consumers of :meth:`items` that find a raw batch's body invalid while walking it
        (``inflating``: while decompressing it, after ``items(inflate=False)``; reported as
        :meth:`items` itself reports a body that does not decompress)."""
        self.stats.node(batch.header.node).packets -= batch.header.count
        meta = {"source": batch.source, **batch.meta} if inflating else dict(batch.meta)
        await self._corrupt(batch.value, meta, exc)

    def items(
        self, match: MatchFn | None = None, chunk: int = 4096, *, inflate: bool = True
    ) -> AsyncIterator[list[WPacket] | RawBatch]:
        """Like :meth:`packets`, but a batch that lies wholly inside the window and before
        every other node's next packet comes as one :class:`RawBatch` (no per-packet objects;
        its packet count is already in the stats, its bytes are the caller's to add).

        ``inflate=False``: such a batch comes still compressed (whether a batch goes out whole
        depends on its header alone), for the caller to decompress
        (:func:`schemas.decompress_body`) off the event loop, e.g. in a pipeline of its own,
        while this reader fetches on; a body that does not decompress goes to
        ``corrupt_batch(batch, exc, inflating=True)``."""
        # One node in one lane: its packets come out in batch order whatever the watermarks
        # say, so every whole in-window batch can go out as a RawBatch (the compiled path).
        solo = len(self._lanes) == 1 and self.nodes is not None and len(self.nodes) == 1
        node_lanes = self._kafka.node_lanes if self._kafka is not None else {}
        return merge(self._lanes, self._fetch, self._corrupt, self.stats, self.lo, self.hi,
                     solo=solo, node_lanes=node_lanes, match=match, chunk=chunk, inflate=inflate)
