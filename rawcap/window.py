"""Time-window reads: ``--from/--to`` over ``rawcap.packets``, a node FIFO buffer, an
archive or a snapshot, as one time-ordered stream of packets.

A *lane* is one ordered sequence of batch values: a Kafka partition (possibly shared by
several nodes; the record key and the batch header name the node), a node's FIFO buffer
directory, or a node's snapshot objects. Each node's batches are in time order within its
lane, so the reader keeps per node only a small queue of still-compressed batches and the
one batch it is emitting from, and merges nodes with a heap. A packet is released only
once every unfinished lane has read past its timestamp (a lane's *watermark* is the first
timestamp of the newest batch read from it), which makes the merge exact for nodes with
their own partition and bounded-skew for nodes sharing one.

Kafka: the message timestamp of a batch is its first packet time (``FORMAT.md``), so
``offsets_for_times`` finds the first offset at ``from - margin`` (the margin catches
batches that start before the window and end inside it) and the stop offset at ``to +
margin``; packets outside ``[from, to)`` are trimmed at the edges. A node's sequence numbers
are checked as batches arrive: a gap is a warning (and is listed in :class:`WindowStats`), a
repeated batch (at-least-once delivery) is dropped. A corrupt batch is counted, sent to
``rawcap.dlq`` when it came from Kafka, and skipped.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import anyio

from schemas import BatchHeader, Packet, decode_batch, decode_header, decompress_body, iter_packets, topics
from schemas.errors import BatchError, ConfigError, TransportError
from schemas.stream import split_frames

from .config import Config
from .timeparse import format_ns

__all__ = (
    "Lane",
    "MatchFn",
    "NodeStats",
    "RawBatch",
    "ValueLane",
    "WPacket",
    "WindowReader",
    "WindowStats",
    "decompress_body",
    "kafka_client_kwargs",
    "local_lanes",
    "node_partition",
)

log = logging.getLogger("rawcap.window")

#: Batches may start this long before --from and still hold packets inside the window.
MARGIN_NS = 15_000_000_000
#: Batches a lane fetches per step (bounded read-ahead).
FETCH_BATCHES = 32


#: A packet filter: ``match(data, origlen, ts_ns)`` (``PacketFilter.match``); ``ts_ns`` is the
#: packet's own time, which workload filters (``--namespace``/``--pod``) resolve at.
MatchFn = Callable[[bytes | memoryview, int, int], bool]

#: An admitted batch: header, the value as read, where its body starts, where it was read.
_Admitted = tuple[BatchHeader, bytes | memoryview, int, dict[str, Any]]


class WPacket(NamedTuple):
    """A packet with the node and interface name it was captured on."""

    ts_ns: int
    node: str
    iface: str
    caplen: int
    origlen: int
    pkttype: int
    data: bytes | memoryview


@dataclass
class NodeStats:
    node: str
    batches: int = 0
    packets: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_ns: int | None = None
    last_ns: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)  # missing seq ranges, inclusive
    duplicates: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "packets": self.packets,
            "bytes": self.bytes,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "gaps": [list(g) for g in self.gaps],
            "duplicates": self.duplicates,
        }


@dataclass
class WindowStats:
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    corrupt: int = 0
    recycled: list[str] = field(default_factory=list)  # human-readable notes on lost history

    def node(self, name: str) -> NodeStats:
        st = self.nodes.get(name)
        if st is None:
            st = self.nodes[name] = NodeStats(name)
        return st

    @property
    def packets(self) -> int:
        return sum(s.packets for s in self.nodes.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.nodes.values())


class Lane(Protocol):
    """One ordered source of batch values."""

    name: str

    async def next_values(self) -> list[tuple[bytes | memoryview, dict[str, Any]]] | None:
        """Up to a few dozen ``(value, meta)`` pairs; ``[]`` = nothing yet, ``None`` = done."""
        ...

    async def aclose(self) -> None: ...


class ValueLane:
    """A lane over any async iterator of batch values (snapshots, archives)."""

    def __init__(self, name: str, values: AsyncIterator[bytes | memoryview]) -> None:
        self.name = name
        self._it = values

    async def next_values(self) -> list[tuple[bytes | memoryview, dict[str, Any]]] | None:
        out: list[tuple[bytes | memoryview, dict[str, Any]]] = []
        async for value in self._it:
            out.append((value, {"source": self.name}))
            if len(out) >= FETCH_BATCHES:
                break
        return out or None

    async def aclose(self) -> None:
        aclose = getattr(self._it, "aclose", None)
        if aclose is not None:
            await aclose()


class _FileLane:
    """A node FIFO buffer directory: ``*.rcsg`` segments in name order."""

    def __init__(self, node_dir: Path) -> None:
        self.name = f"local:{node_dir.name}"
        self._dir = node_dir
        self._files: deque[Path] | None = None

    async def next_values(self) -> list[tuple[bytes | memoryview, dict[str, Any]]] | None:
        if self._files is None:
            self._files = deque(sorted(self._dir.glob("*.rcsg")))
        while self._files:
            path = self._files.popleft()
            try:
                data = await anyio.to_thread.run_sync(path.read_bytes)
            except FileNotFoundError:
                log.warning("buffer segment recycled while reading", extra={"segment": str(path)})
                continue
            last = not self._files
            try:
                frames, used = split_frames(data, final=False, name=str(path))
            except BatchError as exc:
                log.warning("corrupt buffer segment skipped: %s", exc)
                continue
            if used != len(data) and not last:
                log.warning("buffer segment ends inside a frame", extra={"segment": str(path)})
            return [(f.value, {"source": str(path), "offset": f.offset}) for f in frames]
        return None

    async def aclose(self) -> None:
        return None


def local_lanes(buffer_dir: str | os.PathLike[str], nodes: Iterable[str] | None) -> list[_FileLane]:
    """Lanes over ``<bufferDir>/<node>/*.rcsg``; an unknown node is a one-line error."""
    root = Path(buffer_dir)
    if not root.is_dir():
        raise ConfigError(f"buffer directory {root} does not exist (capture.bufferDir)")
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    wanted = list(nodes) if nodes else present
    for n in wanted:
        if n not in present:
            raise ConfigError(
                f"unknown node {n!r}: no buffer under {root} (nodes there: {', '.join(present) or 'none'})"
            )
    return [_FileLane(root / n) for n in wanted]


def kafka_client_kwargs(cfg: Config, kind: str, **extra: Any) -> dict[str, Any]:
    """Client settings (TLS/SASL included) from :mod:`rawcap.kafka`; no consumer group."""
    from . import kafka

    if kind == "consumer":
        return kafka.consumer_kwargs(cfg, None, **extra)
    return kafka.producer_kwargs(cfg, **extra)


def node_partition(node: str, partitions: int) -> int:
    """The partition the default (murmur2) partitioner gives a node's key."""
    from .kafka._wire import node_partition as partition_of

    return partition_of(node, partitions)


def start_kafka_lookup(cfg: Config, lo_ns: int, nodes: Iterable[str] | None) -> Any:
    """The Kafka side of opening a bounded read of ``[lo_ns, ...)`` started in a thread
    (:class:`rawcap.kafka._wire.WindowLookup`), for ``WindowReader(kafka_lookup=...)``; None
    when the plaintext client does not serve ``cfg``. Started early, the broker answers while
    the caller is still importing and setting up (``rawcap pcap export``)."""
    from .kafka._wire import start_lookup

    return start_lookup(cfg, _lookup_ms(lo_ns), nodes)


def _lookup_ms(lo_ns: int) -> int:
    """The time ``offsets_for_times`` is asked for: the window start minus the margin."""
    return max(0, (lo_ns - MARGIN_NS) // 1_000_000)


class _TP(NamedTuple):
    """A topic partition (aiokafka's ``TopicPartition`` has the same fields)."""

    topic: str
    partition: int


class _KafkaLane:
    """One partition between two offsets. A bounded read goes through a fetcher that hands
    record values on as views into the fetch response, one request ahead: the plaintext
    client's (:class:`rawcap.kafka._wire.WireFetcher`, no aiokafka) or, on aiokafka's
    connection, :class:`rawcap.kafka._fetch.PartitionFetcher`. A follow read, or one that
    meets anything its fetcher leaves to aiokafka, drains what aiokafka's consumer holds for
    the partition (at most one fetch response), so its fetcher asks the broker for the next
    one at once. Either way the network overlaps with our decoding (which runs in worker
    threads)."""

    def __init__(self, reader: WindowReader, tp: Any, start: int, stop: float, fetcher: Any) -> None:
        self.name = f"{tp.topic}[{tp.partition}]"
        self._tp, self._pos, self._stop = tp, start, stop
        self._reader = reader
        self._buf: deque[tuple[bytes | memoryview, dict[str, Any]]] = deque()
        self._fast = fetcher  # started already (None: aiokafka's consumer reads)
        self._c: Any = None  # aiokafka's consumer, once this lane reads through it

    async def _consumer(self) -> Any:
        """aiokafka's consumer, reading this partition from the lane's position."""
        if self._c is None:
            self._c = await self._reader._kafka_consumer()
            tp = self._reader._aiokafka_tp(self._tp)
            self._c.seek(tp, self._pos)
            self._c.resume(tp)
            self._tp = tp
        return self._c

    async def next_values(self) -> list[tuple[bytes | memoryview, dict[str, Any]]] | None:
        if not self._buf:
            if self._pos >= self._stop:
                return None
            if self._fast is None or not await self._fetch_fast():
                await self._drain()
        out: list[tuple[bytes | memoryview, dict[str, Any]]] = []
        while self._buf and len(out) < FETCH_BATCHES:
            out.append(self._buf.popleft())
        if not out and self._pos >= self._stop:
            return None
        return out

    async def _fetch_fast(self) -> bool:
        """One response through the zero-copy fetcher; False (and aiokafka's consumer from
        here on) when it cannot do this one."""
        from .kafka._fetch import Unsupported

        assert self._fast is not None
        deadline = time.monotonic() + 30.0
        while True:
            try:
                recs, nxt = await self._fast.next(int(self._stop))
            except Unsupported as exc:
                log.debug("%s: aiokafka's consumer reads on from offset %d: %s", self.name, self._pos, exc)
                self._fast.cancel()
                self._fast = None
                await self._consumer()
                return False
            part, buf = self._tp.partition, self._buf
            for r in recs:
                if r.offset >= self._stop:
                    nxt = int(self._stop)
                    break
                meta = {"partition": part, "offset": r.offset, "key": r.key, "kafka_ts": r.timestamp}
                buf.append((b"" if r.value is None else r.value, meta))  # a null value: corrupt
            self._pos = nxt
            if buf or nxt >= self._stop:
                if nxt >= self._stop:
                    self._fast.cancel()
                return True
            if time.monotonic() > deadline:
                raise TransportError(
                    f"{self.name}: no data at offset {self._pos} although the window ends at offset "
                    f"{int(self._stop)} (broker unreachable?)"
                )

    async def _drain(self) -> None:
        consumer = await self._consumer()
        deadline = time.monotonic() + (1.0 if math.isinf(self._stop) else 30.0)
        while True:
            got = await consumer.getmany(self._tp, timeout_ms=500, max_records=100_000)
            recs = got.get(self._tp, [])
            if recs:
                for r in recs:
                    if r.offset >= self._stop:
                        self._pos = int(self._stop)
                        break
                    meta = {
                        "partition": r.partition,
                        "offset": r.offset,
                        "key": r.key,
                        "kafka_ts": r.timestamp,
                    }
                    self._buf.append((r.value, meta))
                    self._pos = r.offset + 1
                return
            if math.isinf(self._stop):
                return
            if time.monotonic() > deadline:
                raise TransportError(
                    f"{self.name}: no data at offset {self._pos} although the window ends at offset "
                    f"{int(self._stop)} (broker unreachable?)"
                )

    def close(self) -> None:
        """Drop the fetch in flight (synchronous: nothing here needs awaiting)."""
        if self._fast is not None:
            self._fast.cancel()

    async def aclose(self) -> None:
        self.close()


#: Compressed batches the merge may hold while it reads a shared partition on for a node
#: that has not caught up (beyond it, nodes sharing a partition merge in shipping order).
READ_AHEAD_BYTES = 256 * 1024 * 1024


class _Cursor:
    """One node's position in the merge: queued (compressed) batches and the current one."""

    __slots__ = ("header", "lane", "meta", "node", "packets", "pending", "pos", "raw", "value")

    def __init__(self, node: str, lane: int) -> None:
        self.node = node
        self.lane = lane
        self.pending: deque[tuple[BatchHeader, bytes | memoryview, int, dict[str, Any]]] = deque()
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


class RawBatch(NamedTuple):
    """A whole batch inside the window whose packets may be written as they are, in order."""

    header: BatchHeader
    #: decompressed body (rec or tpacket3 layout); still compressed from ``items(inflate=False)``
    body: bytes | memoryview
    value: bytes | memoryview  # the batch as it was read (for rawcap.dlq)
    meta: dict[str, Any]  # where it was read (partition, offset, key)
    source: str = ""  # the lane it came from (reported with a body that does not decompress)


class WindowReader:
    """Read ``[lo_ns, hi_ns)`` for some nodes (``None``: all) from one source.

    ``source``: ``kafka``, ``local`` (``capture.bufferDir``), ``archive`` or lanes given by
    the caller (``lanes=``, e.g. a snapshot). Use as an async context manager, then iterate
    :meth:`packets` (merged, trimmed) or :meth:`batches` (raw values per node, in order).
    """

    def __init__(
        self,
        cfg: Config,
        lo_ns: int,
        hi_ns: int,
        *,
        nodes: Iterable[str] | None = None,
        source: str = "kafka",
        lanes: list[Any] | None = None,
        follow: bool = False,
        dlq: bool = True,
        kafka_lookup: Any = None,
    ) -> None:
        if lo_ns > hi_ns:
            raise ConfigError(f"--from ({format_ns(lo_ns)}) is after --to ({format_ns(hi_ns)})")
        self.cfg = cfg
        self.lo, self.hi = lo_ns, (2**63 if follow else hi_ns)
        self.nodes = frozenset(nodes) if nodes else None
        self.source = source
        self.follow = follow
        self.stats = WindowStats()
        self._lanes: list[Any] = list(lanes or [])
        self._given_lanes = lanes is not None  # a snapshot with no objects gives []
        self._consumer: Any = None
        self._producer: Any = None
        self._dlq = dlq and source == "kafka"
        self._last: dict[str, int] = {}  # node -> sequence number of the last batch read
        self._seen: dict[str, dict[tuple[int, int, int], None]] = {}  # recent (seq, t0, n) per node
        self._partitions_of_nodes: dict[int, list[str]] = {}
        self._partition_count = 0
        #: node asked for by name -> index of the (Kafka) lane it is in, when lanes are shared
        self._node_lanes: dict[str, int] = {}
        self._recycled_partitions: set[int] = set()
        #: the plaintext client's lookup (``start_kafka_lookup``), started early by the caller
        #: or by :meth:`_open_kafka`; it owns the fetch connections and threads until closed
        self._lookup = kafka_lookup
        self._kafka_open = False

    async def __aenter__(self) -> WindowReader:
        try:
            if self._given_lanes:
                pass
            elif self.source == "kafka":
                await self._open_kafka()
            elif self.source == "local":
                self._lanes = local_lanes(self.cfg.get("capture.bufferDir"), self.nodes)
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
        rest: list[Any] = []
        for lane in self._lanes:
            if isinstance(lane, _KafkaLane):
                lane.close()
            else:
                rest.append(lane)
        if self._lookup is not None:
            lookup, self._lookup = self._lookup, None
            lookup.close()  # its fetch threads end at once: their sockets are shut down
        if not rest and self._consumer is None and self._producer is None:
            return
        with anyio.CancelScope(shield=True):
            for lane in rest:
                await lane.aclose()
            if self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                await consumer.stop()
            if self._producer is not None:
                producer, self._producer = self._producer, None
                await producer.stop()

    # -- sources ---------------------------------------------------------------------------
    def _archive_lanes(self) -> list[Any]:
        """One lane over ``archive.url``: :func:`rawcap.archive.iter_window` yields the
        window's batches each node in archive order, nodes merged by first packet time."""
        from .archive import iter_window

        nodes = sorted(self.nodes) if self.nodes else None
        return [ValueLane("archive", iter_window(self.cfg, self.lo, self.hi, nodes=nodes))]

    async def _open_kafka(self) -> None:
        """Partitions, their offsets and a lane each: through the plaintext client's lookup
        (the one given, or one started here) when it can, else through aiokafka."""
        # Imported here, not at the top: pcap export imports this module to start its lookup
        # before the event loop (asyncio: ~25 ms) is imported.
        import asyncio

        lookup, self._lookup = self._lookup, None
        if lookup is not None and (
            self.follow or lookup.lo_ms != _lookup_ms(self.lo) or lookup.nodes != self.nodes
        ):
            lookup.close()  # started for another read: not ours to use
            lookup = None
        if lookup is None and not self.follow:
            lookup = start_kafka_lookup(self.cfg, self.lo, self.nodes)
        if lookup is not None:
            # Usually finished already (it was started early); else waited for in a thread
            # (asyncio's, not anyio's: importing anyio's backend costs ~25 ms of start-up).
            done = lookup.result() if lookup.finished() else await asyncio.to_thread(lookup.result)
            if done is not None:
                self._lookup = done
                self._plan_lanes(
                    done.partition_count,
                    done.partitions,
                    lambda pw: _TP(done.topic, pw.partition),
                    lambda pw: done.fetcher(pw.partition),
                )
                return
        await self._open_aiokafka()

    async def _start_consumer(self) -> Any:
        """A started group-less aiokafka consumer that knows the topic's partitions."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        from .kafka._chunkreader import install

        install()  # fetch responses read with one copy, not four (rawcap/kafka/_chunkreader.py)
        # check_crcs off: the broker checks record CRCs when it accepts a produce, and every
        # batch body carries a zstd content checksum verified on decompression; the client-side
        # CRC pass costs ~30% of the Kafka read time of an export.
        kwargs = kafka_client_kwargs(self.cfg, "consumer", request_timeout_ms=30000, check_crcs=False)
        consumer = AIOKafkaConsumer(**kwargs)
        try:
            with anyio.fail_after(30):
                await consumer.start()
        except (KafkaError, TimeoutError, OSError) as exc:
            await consumer.stop()
            raise TransportError(
                f"cannot reach Kafka at {','.join(kwargs.get('bootstrap_servers') or ())}: {exc!r}"
            ) from None
        self._consumer = consumer
        if not consumer.partitions_for_topic(topics.PACKETS):
            # A fresh client knows no topic yet: ask for this one's metadata explicitly.
            try:
                await consumer._client._wait_on_metadata(topics.PACKETS)
            except KafkaError:
                pass
        if not consumer.partitions_for_topic(topics.PACKETS):
            raise ConfigError(f"topic {topics.PACKETS} does not exist on {kwargs.get('bootstrap_servers')}")
        return consumer

    async def _kafka_consumer(self) -> Any:
        """aiokafka's consumer, started on first use when the plaintext client opened the read
        (a lane falls back to it, a node is looked for): every lane's partition assigned and
        paused, as :meth:`_open_aiokafka` leaves it."""
        if self._consumer is None:
            consumer = await self._start_consumer()
            tps = [self._aiokafka_tp(lane._tp) for lane in self._lanes if isinstance(lane, _KafkaLane)]
            consumer.assign(tps)
            consumer.pause(*tps)
        return self._consumer

    @staticmethod
    def _aiokafka_tp(tp: Any) -> Any:
        from aiokafka import TopicPartition

        return tp if isinstance(tp, TopicPartition) else TopicPartition(tp.topic, tp.partition)

    async def _open_aiokafka(self) -> None:
        from aiokafka import TopicPartition

        from .kafka._fetch import PartitionFetcher
        from .kafka._wire import PartitionWindow

        consumer = await self._start_consumer()
        parts = consumer.partitions_for_topic(topics.PACKETS)
        n = len(parts)
        if self.nodes is not None:
            wanted = sorted({node_partition(node, n) for node in self.nodes})
        else:
            wanted = sorted(parts)
        tps = [TopicPartition(topics.PACKETS, p) for p in wanted]
        consumer.assign(tps)
        # Paused until its lane says who reads it (a bounded lane fetches by itself), so that
        # aiokafka's fetcher does not start reading from the reset position meanwhile.
        consumer.pause(*tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: _lookup_ms(self.lo) for tp in tps})
        windows = []
        for tp in tps:
            s = starts.get(tp)
            found = (s.offset, s.timestamp) if s is not None else None
            windows.append(PartitionWindow(tp.partition, begin[tp], end[tp], found))

        def fetcher(pw: PartitionWindow) -> Any:
            tp = TopicPartition(topics.PACKETS, pw.partition)
            consumer.seek(tp, pw.start)
            fast = None if self.follow else PartitionFetcher.create(consumer, tp)
            if fast is not None and pw.start < pw.end:
                fast.start(pw.start)
                return fast
            return None

        self._plan_lanes(n, windows, lambda pw: TopicPartition(topics.PACKETS, pw.partition), fetcher)
        for lane in self._lanes:
            if isinstance(lane, _KafkaLane) and lane._fast is None:
                await lane._consumer()  # aiokafka's fetcher starts reading it now

    def _plan_lanes(self, n: int, windows: list[Any], tp_of: Callable[[Any], Any],
                    fetcher_of: Callable[[Any], Any]) -> None:
        """One lane per partition window (``rawcap.kafka._wire.PartitionWindow``), the notes on
        recycled history, and which lane each requested node is in."""
        self._partition_count = n
        self._kafka_open = True
        for node in sorted(self.nodes or ()):
            self._partitions_of_nodes.setdefault(node_partition(node, n), []).append(node)
        for pw in windows:
            start = pw.start
            at_ns = None if pw.found is None else pw.found[1] * 1_000_000
            if at_ns is not None and start == pw.begin and pw.begin > 0 and at_ns > self.lo:
                self._recycled_partitions.add(pw.partition)
                self.stats.recycled.append(
                    f"partition {pw.partition}: offsets before {pw.begin} were recycled by retention; "
                    f"data before {format_ns(at_ns)} is gone"
                )
            # Read to the end offset as of now, not to offsets_for_times(to): timestamps in a
            # partition are not monotonic (an imported capture, a FIFO replayed after a broker
            # outage, nodes sharing a partition), and a batch of the window may follow a newer
            # one. Out-of-window batches cost a header decode, never a decompression.
            stop: float = math.inf if self.follow else pw.end
            for node in self.nodes or ():
                if node_partition(node, n) == pw.partition:
                    self._node_lanes[node] = len(self._lanes)
            self._lanes.append(_KafkaLane(self, tp_of(pw), start, stop, fetcher_of(pw)))

    async def check_nodes(self) -> None:
        """Raise for a requested node that never wrote to its partition (a typo, usually)."""
        if self.nodes is None:
            return
        missing = [n for n in self.nodes if n not in self.stats.nodes]
        if not missing:
            return
        if self.source != "kafka" or not self._kafka_open:
            return
        seen = await self._recent_keys()
        for node in sorted(missing):
            if node in seen:
                continue
            part = node_partition(node, self._partition_count)
            why = (
                f" (partition {part} was recycled by retention before the window: its data may be gone)"
                if part in self._recycled_partitions
                else ""
            )
            raise ConfigError(
                f"unknown node {node!r}: no batches from it in {topics.PACKETS}{why}; "
                f"nodes seen: {', '.join(sorted(seen)) or 'none'}"
            )

    async def _recent_keys(self) -> set[str]:
        """Keys at the start and end of every partition (a cheap existence check)."""
        from aiokafka import TopicPartition

        c = await self._kafka_consumer()
        parts = sorted(c.partitions_for_topic(topics.PACKETS) or ())
        tps = [TopicPartition(topics.PACKETS, p) for p in parts]
        c.assign(tps)
        begin, end = await c.beginning_offsets(tps), await c.end_offsets(tps)
        keys: set[str] = set()
        for tp in tps:
            for start in sorted({begin[tp], max(begin[tp], end[tp] - 100)}):
                if start >= end[tp]:
                    continue
                c.seek(tp, start)
                # Records exist (start < end), but one fetch may come back empty on a busy
                # broker: an empty answer must not turn a real node into an "unknown" one.
                deadline = time.monotonic() + 15
                records: list[Any] = []
                while not records and time.monotonic() < deadline:
                    got = await c.getmany(tp, timeout_ms=1000, max_records=100)
                    records = got.get(tp, [])
                keys.update(r.key.decode(errors="replace") for r in records if r.key)
        return keys

    # -- batch admission -------------------------------------------------------------------
    async def _corrupt(self, value: bytes | memoryview, meta: dict[str, Any], exc: Exception) -> None:
        self.stats.corrupt += 1
        log.warning("corrupt batch skipped: %s", exc, extra={k: v for k, v in meta.items() if k != "key"})
        if not self._dlq:
            return
        try:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer

                self._producer = AIOKafkaProducer(**kafka_client_kwargs(self.cfg, "producer"))
                await self._producer.start()
            headers = [
                ("error", str(exc).encode()),
                ("source.topic", topics.PACKETS.encode()),
                ("source.partition", str(meta.get("partition")).encode()),
                ("source.offset", str(meta.get("offset")).encode()),
                ("reporter", b"forensics"),
            ]
            await self._producer.send_and_wait(topics.DLQ, bytes(value), key=meta.get("key"), headers=headers)
        except Exception as dexc:  # the DLQ is best effort; the read goes on
            log.warning("could not send corrupt batch to %s: %r", topics.DLQ, dexc)

    def _admit(self, header: BatchHeader) -> bool:
        """Window, node and sequence checks on a batch header; True to use it."""
        node = header.node
        if self.nodes is not None and node not in self.nodes:
            return False
        in_window = header.count > 0 and header.last_ns >= self.lo and header.first_ns < self.hi
        seen = self._seen.setdefault(node, {})
        key = (header.seq, header.first_ns, header.count)
        if key in seen:
            # The same batch again (at-least-once delivery, a replayed FIFO): drop it.
            if in_window:
                self.stats.node(node).duplicates += 1
            return False
        seen[key] = None
        if len(seen) > 4096:
            del seen[next(iter(seen))]
        pseq = self._last.get(node)
        if pseq is not None and in_window:
            if header.seq > pseq + 1:
                self.stats.node(node).gaps.append((pseq + 1, header.seq - 1))
                log.warning(
                    "node %s: sequence gap: batches %d..%d missing (%d), before %s",
                    node,
                    pseq + 1,
                    header.seq - 1,
                    header.seq - pseq - 1,
                    format_ns(header.first_ns),
                )
            elif header.seq <= pseq:
                log.info(
                    "node %s: sequence restarts at %d after %d (another capture or import)",
                    node,
                    header.seq,
                    pseq,
                )
        self._last[node] = header.seq
        if not in_window:
            return False
        st = self.stats.node(node)
        st.batches += 1
        st.first_seq = header.seq if st.first_seq is None else min(st.first_seq, header.seq)
        st.last_seq = header.seq if st.last_seq is None else max(st.last_seq, header.seq)
        return True

    def _wanted_key(self, key: bytes | None) -> bool:
        """Whether a batch with this Kafka key (the node name) may belong to the selection."""
        if self.nodes is None or not key:
            return True
        return key.decode(errors="replace") in self.nodes

    async def _fetch(self, lane: Any) -> list[_Admitted] | None:
        """The lane's next values as admitted ``(header, value, body offset, meta)``; when none
        is admitted but the lane moved, one marker with offset -1 carries its watermark."""
        vals = await lane.next_values()
        if vals is None:
            return None
        out: list[_Admitted] = []
        for value, meta in vals:
            try:
                header, off = decode_header(value)
            except BatchError as exc:
                if not self._wanted_key(meta.get("key")):
                    continue  # another node's corrupt batch (Kafka key): not this read's to report
                await self._corrupt(value, meta, exc)
                continue
            if self._admit(header):
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
            async for out in self._follow(match):
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

    async def items(
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
        lanes = self._lanes
        marks = [-1] * len(lanes)  # watermark per lane; huge when done
        done = [False] * len(lanes)
        cursors: dict[str, _Cursor] = {}
        heap: list[tuple[int, str]] = []
        lo, hi = self.lo, self.hi
        # One node in one lane: its packets come out in batch order whatever the watermarks
        # say, so every whole in-window batch can go out as a RawBatch (the compiled path).
        solo = len(lanes) == 1 and self.nodes is not None and len(self.nodes) == 1
        # Nodes asked for by name (Kafka): a partition's watermark says nothing about a node
        # that has not shown up in it yet, since partition timestamps are not monotonic (other
        # nodes' newer batches, an import of old traffic after live traffic). Each such node
        # keeps a watermark of its own and its lane is read on until the node catches up, as
        # long as what waits in memory stays under READ_AHEAD_BYTES.
        node_lanes = self._node_lanes
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

        def advance(cur: _Cursor) -> None:
            """Done with the cursor's batch: queue its next one in the merge, if any."""
            if cur.next_batch():
                heapq.heappush(heap, (cur.head(), cur.node))

        async def pull(i: int) -> None:
            got = await self._fetch(lanes[i])
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
                    cur = cursors[header.node] = _Cursor(header.node, i)
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
            st = self.stats.node(node)
            if cur.packets is None:
                whole = match is None and h.first_ns >= lo and h.last_ns < hi and (h.last_ns <= limit or solo)
                try:
                    if inflate or not whole:
                        # zstd releases the GIL: the Kafka fetcher keeps going meanwhile.
                        cur.raw = await anyio.to_thread.run_sync(decompress_body, h, cur.raw)
                    if not whole:
                        cur.packets = list(iter_packets(h, cur.raw))
                except BatchError as exc:
                    await self._corrupt(cur.value, {"source": lanes[cur.lane].name, **cur.meta}, exc)
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

    async def _load(self, cur: _Cursor, lane_name: str) -> bool:
        """Decode the cursor's next pending batch into packets (used by ``--follow``)."""
        while cur.next_batch():
            assert cur.header is not None
            try:
                cur.packets = decode_batch(cur.value).packets
            except BatchError as exc:
                await self._corrupt(cur.value, {"source": lane_name, **cur.meta}, exc)
                continue
            if cur.packets:
                return True
        return False

    async def _follow(
        self, match: MatchFn | None
    ) -> AsyncIterator[list[WPacket]]:
        """Live tail: batches are emitted as they arrive (per-batch order, no cross-node merge)."""
        while True:
            out: list[WPacket] = []
            for lane in self._lanes:
                got = await self._fetch(lane)
                for header, value, off, meta in got or []:
                    if off < 0:
                        continue
                    cur = _Cursor(header.node, 0)
                    cur.pending.append((header, value, off, meta))
                    if not await self._load(cur, lane.name) or cur.packets is None:
                        continue
                    st = self.stats.node(header.node)
                    ifaces = header.ifaces
                    for p in cur.packets:
                        if p.ts_ns < self.lo or (match is not None and not match(p.data, p.origlen, p.ts_ns)):
                            continue
                        out.append(
                            WPacket(
                                p.ts_ns,
                                header.node,
                                ifaces.get(p.ifindex, str(p.ifindex)),
                                p.caplen,
                                p.origlen,
                                p.pkttype,
                                p.data,
                            )
                        )
                        st.packets += 1
                        st.bytes += p.caplen
            if out:
                yield out
            else:
                await anyio.sleep(0.2)
