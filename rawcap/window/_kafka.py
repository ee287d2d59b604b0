"""The Kafka side of a window read: one lane per partition, the clients they read with, the
node probe and the dead-letter producer.

Opening a bounded read goes through the project's plaintext client when it serves the
configuration (:func:`start_kafka_lookup`, started early by ``rawcap pcap export``): its
lookup finds the partitions and their offsets and has the first fetch of each in flight.
Otherwise (TLS, SASL, ``--follow``, the client turned off or failing) stock aiokafka's
group-less consumer does the same. Either way each partition becomes a :class:`KafkaLane`
that drives one :class:`rawcap.kafka.Fetcher`; when the plaintext client's fetcher meets
something it leaves to aiokafka (``Unsupported``), the lane reads on from the same offset
through stock aiokafka's consumer (:class:`rawcap.kafka.ConsumerFetcher`). Those are the two
read paths.

Kafka: the message timestamp of a batch is its first packet time (``FORMAT.md``), so the
read starts at ``offsets_for_times(from - margin)`` (the margin catches batches that start
before the window and end inside it) and stops at the end offset as of the opening.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from schemas import topics
from schemas.errors import ConfigError, TransportError

from ..config import Config
from ..kafka import ConsumerFetcher, Fetcher, KafkaRecord, PartitionWindow, Unsupported, WindowLookup
from ..timeparse import format_ns
from ._types import FETCH_BATCHES, MARGIN_NS, LaneValues, WindowStats

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

__all__ = (
    "DeadLetters",
    "KafkaLane",
    "KafkaSource",
    "kafka_client_kwargs",
    "lookup_ms",
    "node_partition",
    "start_kafka_lookup",
)

log = logging.getLogger("rawcap.window")

#: How long a bounded read waits for data the broker said is there.
_NO_DATA_TIMEOUT = 30.0


def kafka_client_kwargs(cfg: Config, kind: str, **extra: Any) -> dict[str, Any]:
    """Client settings (TLS/SASL included) from :mod:`rawcap.kafka`; no consumer group."""
    from .. import kafka

    if kind == "consumer":
        return kafka.consumer_kwargs(cfg, None, **extra)
    return kafka.producer_kwargs(cfg, **extra)


def node_partition(node: str, partitions: int) -> int:
    """The partition the default (murmur2) partitioner gives a node's key."""
    from ..kafka import node_partition as partition_of

    return partition_of(node, partitions)


def lookup_ms(lo_ns: int) -> int:
    """The time ``offsets_for_times`` is asked for: the window start minus the margin."""
    return max(0, (lo_ns - MARGIN_NS) // 1_000_000)


def start_kafka_lookup(cfg: Config, lo_ns: int, nodes: Iterable[str] | None) -> WindowLookup | None:
    """The Kafka side of opening a bounded read of ``[lo_ns, ...)`` started in a thread
    (:class:`rawcap.kafka.WindowLookup`), for ``WindowReader(kafka_lookup=...)``; None when
    the plaintext client does not serve ``cfg``. Started early, the broker answers while the
    caller is still importing and setting up (``rawcap pcap export``)."""
    from ..kafka import start_lookup

    return start_lookup(cfg, lookup_ms(lo_ns), nodes)


class _TP(NamedTuple):
    """A topic partition (aiokafka's ``TopicPartition`` has the same fields)."""

    topic: str
    partition: int


class KafkaLane:
    """One partition between two offsets (``follow``: no end), read through one
    :class:`rawcap.kafka.Fetcher`. The plaintext client's fetcher hands record values on as
    views into the fetch response, one request ahead, so the network overlaps with our
    decoding (which runs in worker threads); should it raise ``Unsupported``, the lane asks
    ``fallback`` for aiokafka's consumer at the same offset and reads on through that."""

    def __init__(self, tp: _TP, start: int, stop: int, fetcher: Fetcher | None, *, follow: bool,
                 fallback: Callable[[_TP, int], Awaitable[Fetcher]]) -> None:
        self.name = f"{tp.topic}[{tp.partition}]"
        self.tp = tp
        self._pos, self._stop, self._follow = start, stop, follow
        self._buf: deque[tuple[bytes | memoryview, dict[str, Any]]] = deque()
        self._fetcher = fetcher  # started already; None: nothing to read
        self._fallback = fallback

    async def next_values(self) -> LaneValues | None:
        if not self._buf:
            if self._pos >= self._stop:
                return None
            await self._fill()
        out: LaneValues = []
        while self._buf and len(out) < FETCH_BATCHES:
            out.append(self._buf.popleft())
        if not out and self._pos >= self._stop:
            return None
        return out

    async def _fill(self) -> None:
        """Records from the fetcher until some arrive, the stop offset is reached or (follow)
        one fetch came back empty; a bounded read that gets nothing for
        ``_NO_DATA_TIMEOUT`` s is a :class:`TransportError`."""
        deadline = time.monotonic() + _NO_DATA_TIMEOUT
        while True:
            if self._fetcher is None:
                self._fetcher = await self._fallback(self.tp, self._pos)
            try:
                recs, nxt = await self._fetcher.next(self._stop)
            except Unsupported as exc:
                log.debug("%s: aiokafka's consumer reads on from offset %d: %s", self.name, self._pos, exc)
                self._fetcher.cancel()
                self._fetcher = await self._fallback(self.tp, self._pos)
                continue
            self._take(recs, nxt)
            if self._buf or self._pos >= self._stop or self._follow:
                if self._pos >= self._stop:
                    self._fetcher.cancel()
                return
            if time.monotonic() > deadline:
                raise TransportError(
                    f"{self.name}: no data at offset {self._pos} although the window ends at offset "
                    f"{self._stop} (broker unreachable?)"
                )

    def _take(self, recs: Sequence[KafkaRecord], nxt: int) -> None:
        part, buf, stop = self.tp.partition, self._buf, self._stop
        for r in recs:
            if r.offset >= stop:
                nxt = stop
                break
            meta = {"partition": part, "offset": r.offset, "key": r.key, "kafka_ts": r.timestamp}
            buf.append((b"" if r.value is None else r.value, meta))  # a null value: corrupt
        self._pos = nxt

    def close(self) -> None:
        """Drop the fetch in flight (synchronous: nothing here needs awaiting)."""
        if self._fetcher is not None:
            self._fetcher.cancel()

    async def aclose(self) -> None:
        self.close()


def _aiokafka_tp(tp: _TP) -> TopicPartition:
    from aiokafka import TopicPartition

    return TopicPartition(tp.topic, tp.partition)


class KafkaSource:
    """The Kafka lanes of one read and the clients behind them: the plaintext client's
    lookup (it owns its fetch connections and threads until closed) and, once anything needs
    it, aiokafka's group-less consumer with every lane's partition assigned and paused."""

    def __init__(self, cfg: Config, lo_ns: int, nodes: frozenset[str] | None, *, follow: bool,
                 stats: WindowStats, lookup: WindowLookup | None = None) -> None:
        self.cfg, self.lo, self.nodes, self.follow, self.stats = cfg, lo_ns, nodes, follow, stats
        self.lanes: list[KafkaLane] = []
        #: node asked for by name -> index of the lane it is in
        self.node_lanes: dict[str, int] = {}
        self.partition_count = 0
        self.recycled_partitions: set[int] = set()
        self.opened = False
        self._lookup = lookup
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self) -> list[KafkaLane]:
        """Partitions, their offsets and a lane each: through the plaintext client's lookup
        (the one given, or one started here) when it can, else through aiokafka."""
        # Imported here, not at the top: pcap export imports this module to start its lookup
        # before the event loop (asyncio: ~25 ms) is imported.
        import asyncio

        lookup, self._lookup = self._lookup, None
        if lookup is not None and (
            self.follow or lookup.lo_ms != lookup_ms(self.lo) or lookup.nodes != self.nodes
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
                self._plan(done.partition_count, done.partitions, done.topic,
                           lambda pw: done.fetcher(pw.partition))
                return self.lanes
        await self._open_aiokafka()
        return self.lanes

    async def _open_aiokafka(self) -> None:
        from ..kafka import node_partition as partition_of

        consumer = await self.consumer()
        parts = sorted(consumer.partitions_for_topic(topics.PACKETS) or ())
        n = len(parts)
        wanted = sorted({partition_of(node, n) for node in self.nodes}) if self.nodes is not None else parts
        tps = [_aiokafka_tp(_TP(topics.PACKETS, p)) for p in wanted]
        consumer.assign(tps)
        # Paused until its lane's fetcher starts, so that aiokafka's fetcher does not start
        # reading from the reset position meanwhile.
        consumer.pause(*tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: lookup_ms(self.lo) for tp in tps})
        windows = []
        for tp in tps:
            s = starts.get(tp)
            found = (s.offset, s.timestamp) if s is not None else None
            windows.append(PartitionWindow(tp.partition, begin[tp], end[tp], found))

        def fetcher(pw: PartitionWindow) -> Fetcher | None:
            if not self.follow and pw.start >= pw.end:
                return None
            f = ConsumerFetcher(consumer, _aiokafka_tp(_TP(topics.PACKETS, pw.partition)))
            f.start(pw.start)
            return f

        self._plan(n, windows, topics.PACKETS, fetcher)

    def _plan(self, n: int, windows: Sequence[PartitionWindow], topic: str,
              fetcher_of: Callable[[PartitionWindow], Fetcher | None]) -> None:
        """One lane per partition window, the notes on recycled history, and which lane each
        requested node is in."""
        from ..kafka import node_partition as partition_of

        self.partition_count = n
        self.opened = True
        for pw in windows:
            start = pw.start
            at_ns = None if pw.found is None else pw.found[1] * 1_000_000
            if at_ns is not None and start == pw.begin and pw.begin > 0 and at_ns > self.lo:
                self.recycled_partitions.add(pw.partition)
                self.stats.recycled.append(
                    f"partition {pw.partition}: offsets before {pw.begin} were recycled by retention; "
                    f"data before {format_ns(at_ns)} is gone"
                )
            # Read to the end offset as of now, not to offsets_for_times(to): timestamps in a
            # partition are not monotonic (an imported capture, a FIFO replayed after a broker
            # outage, nodes sharing a partition), and a batch of the window may follow a newer
            # one. Out-of-window batches cost a header decode, never a decompression.
            stop = 2**63 if self.follow else pw.end
            for node in self.nodes or ():
                if partition_of(node, n) == pw.partition:
                    self.node_lanes[node] = len(self.lanes)
            self.lanes.append(KafkaLane(_TP(topic, pw.partition), start, stop, fetcher_of(pw),
                                        follow=self.follow, fallback=self._fallback))

    async def _fallback(self, tp: _TP, offset: int) -> Fetcher:
        """aiokafka's consumer, reading ``tp`` from ``offset`` on."""
        fetcher = ConsumerFetcher(await self.consumer(), _aiokafka_tp(tp))
        fetcher.start(offset)
        return fetcher

    async def consumer(self) -> AIOKafkaConsumer:
        """aiokafka's group-less consumer, started on first use, knowing the topic's partitions,
        with every lane's partition assigned and paused."""
        if self._consumer is not None:
            return self._consumer
        import anyio
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        from ..kafka import topic_partitions

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
        if not await topic_partitions(consumer, topics.PACKETS):
            raise ConfigError(f"topic {topics.PACKETS} does not exist on {kwargs.get('bootstrap_servers')}")
        if self.lanes:
            tps = [_aiokafka_tp(lane.tp) for lane in self.lanes]
            consumer.assign(tps)
            consumer.pause(*tps)
        return consumer

    async def recent_keys(self) -> set[str]:
        """Keys at the start and end of every partition (a cheap existence check)."""
        from ..kafka import topic_partitions

        c = await self.consumer()
        tps = await topic_partitions(c, topics.PACKETS)
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

    def close(self) -> None:
        """What closes synchronously: the lanes' fetches, the plaintext client's connections
        and threads (they end at once: their sockets are shut down)."""
        for lane in self.lanes:
            lane.close()
        if self._lookup is not None:
            lookup, self._lookup = self._lookup, None
            lookup.close()

    @property
    def needs_aclose(self) -> bool:
        return self._consumer is not None

    async def aclose(self) -> None:
        """Stop aiokafka's consumer, if one was started (call :meth:`close` first)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


class DeadLetters:
    """Corrupt batches read from Kafka go to ``rawcap.dlq`` (best effort: the read goes on)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._producer: AIOKafkaProducer | None = None

    async def send(self, value: bytes | memoryview, meta: dict[str, Any], exc: Exception) -> None:
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

    @property
    def needs_aclose(self) -> bool:
        return self._producer is not None

    async def aclose(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
