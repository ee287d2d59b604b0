"""The Kafka side: ``k8s-watch`` publishes, ``enrich`` joins, ``flows`` reads.

``enrich`` (consumer group ``rawcap-enrich``) reads ``rawcap.packets`` as a group member and
the whole of ``rawcap.k8s`` and ``rawcap.procs`` on its own (every instance needs all of the
context, whatever packet partitions it owns). Flows are published only once their interval
has ended in packet time *and* on the wall clock plus a grace period, so the Kubernetes
record of a pod that started a moment before its first packet has arrived by then; offsets
are committed only up to the first packet of the oldest flow not yet published (at least
once: a restart may count a few packets twice, it never loses a flow).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from rawcap.config import Config
from rawcap.kafka import (
    BatchProducer,
    DeadLetters,
    consumer_kwargs,
    ensure_topics,
    follow_topic,
    producer_kwargs,
    read_topic_to_end,
    stop_client,
)
from rawcap.packet import format_addr
from schemas import topics
from schemas.control import CaptureFilter, decode_control
from schemas.errors import BatchError, RawcapError
from schemas.flows import FlowRecord, encode_flow
from schemas.k8s import UnsupportedRecord, WorkloadIndex, encode_k8s

from ._filters import FilterPlanner
from ._flows import Flow, FlowTable
from ._ingest import add_batch, decode_body
from ._lease import LeaseElector
from ._model import Change
from ._procs import ProcIndex
from ._watch import Watcher, api_client

__all__ = ("GROUP", "Election", "Enricher", "publish_flows", "run_enrich", "run_k8s_watch")

log = logging.getLogger("rawcap.enrich")
GROUP = "rawcap-enrich"
_PROTO = {6: "tcp", 17: "udp"}


class Enricher:
    """Packets in, enriched flow records out; Kafka-free so tests and the benchmark drive it."""

    def __init__(self, index: WorkloadIndex, procs: ProcIndex, interval_ns: int, *,
                 grace_ns: int = 2_000_000_000, max_flows: int = 200_000) -> None:
        self.index = index
        self.procs = procs
        self.interval = interval_ns
        self.grace = grace_ns
        self.max_flows = max_flows
        self.tables: dict[tuple[int, str], FlowTable] = {}
        self._last_add: dict[tuple[int, str], float] = {}
        self.next_offset: dict[int, int] = {}
        self.packets = self.non_l4 = self.corrupt = 0

    def add_batch(self, partition: int, offset: int, value: bytes) -> str:
        """Add one batch; returns its node. Raises :class:`BatchError` for a corrupt batch
        (the caller sends it to the DLQ)."""
        try:
            header, raw = decode_body(value)
            node = header.node
            key = (partition, node)
            table = self.tables.get(key)
            if table is None:
                table = self.tables[key] = FlowTable(node, self.interval, max_flows=self.max_flows)
            l4_packets, other = add_batch(table, header, raw, offset)
            self.packets += l4_packets
            self.non_l4 += other
            self._last_add[key] = time.monotonic()
            return node
        finally:
            self.next_offset[partition] = offset + 1

    def due(self, *, now_ns: int | None = None, idle_s: float | None = None) -> list[FlowRecord]:
        """Enriched records of every interval that is over."""
        now = time.time_ns() if now_ns is None else now_ns
        idle = self.interval / 1e9 if idle_s is None else idle_s
        mono = time.monotonic()
        out: list[FlowRecord] = []
        for key, table in self.tables.items():
            if mono - self._last_add.get(key, mono) >= idle:
                flows = table.flush()  # nothing new on this lane: what we have is final
            else:
                flows = table.expire(min(table.watermark, now - self.grace))
            out.extend(self.record(f) for f in flows)
        return out

    def flush(self) -> list[FlowRecord]:
        return [self.record(f) for t in self.tables.values() for f in t.flush()]

    def idle_in(self) -> float | None:
        """Seconds until the first lane holding flows has been idle long enough for
        :meth:`due` to hand them all out (at most 0 once one has), None if none holds any."""
        idle = self.interval / 1e9
        mono = time.monotonic()
        waits = [self._last_add.get(key, mono) + idle - mono for key, t in self.tables.items() if len(t)]
        return min(waits) if waits else None

    def keep_partitions(self, owned: set[int]) -> None:
        """Forget the flows of partitions this instance no longer owns (a rebalance moved
        them): their next owner reads them again from the last commit, which is at or before
        the first packet of every flow not yet published, so nothing is lost."""
        for key in [k for k in self.tables if k[0] not in owned]:
            del self.tables[key]
            self._last_add.pop(key, None)
        for partition in [p for p in self.next_offset if p not in owned]:
            del self.next_offset[partition]

    def commit_offsets(self) -> dict[int, int]:
        """Per partition, the offset up to which every packet's flow has been handed out."""
        out = dict(self.next_offset)
        for (partition, _node), table in self.tables.items():
            tag = table.min_tag()
            if tag is not None:
                out[partition] = min(out.get(partition, tag), tag)
        return out

    def _pod_uid(self, ip: bytes, ts_ns: int) -> str:
        wl = self.index.resolve(ip, ts_ns)
        pod = self.index.pod(wl.namespace, wl.name) if wl is not None and wl.kind == "pod" else None
        return pod.uid if pod is not None else ""

    def horizon(self) -> int | None:
        """Oldest packet time still needed (for pruning closed history), or None."""
        marks = [t.watermark for t in self.tables.values() if t.watermark]
        return min(marks) if marks else None

    def record(self, f: Flow) -> FlowRecord:
        t = f.first_ns
        proto = _PROTO.get(f.proto, str(f.proto))
        src_proc, dst_proc = self.procs.lookup(f.node, f.a, f.ap, f.b, f.bp, t, self._pod_uid)
        return FlowRecord(
            node=f.node, proto=proto, src=format_addr(f.a), sport=f.ap, dst=format_addr(f.b),
            dport=f.bp, first_ns=f.first_ns, last_ns=f.last_ns, interval_ns=f.bucket * self.interval,
            packets_fwd=f.packets_fwd, bytes_fwd=f.bytes_fwd, packets_rev=f.packets_rev,
            bytes_rev=f.bytes_rev, flags_fwd=f.flags_fwd, flags_rev=f.flags_rev,
            src_workload=self.index.resolve(f.a, t), dst_workload=self.index.resolve(f.b, t),
            src_process=src_proc, dst_process=dst_proc,
        )


async def _follow(cfg: Config, topic: str, apply: Callable[[Any], None],
                  ready: anyio.Event | None = None) -> None:
    """Follow ``topic`` (:func:`rawcap.kafka.follow_topic`), skipping records we cannot read."""

    def guarded(r: Any) -> None:
        try:
            apply(r)
        except UnsupportedRecord as exc:
            log.warning("skipping record", extra={"topic": topic, "offset": r.offset, "error": str(exc)})

    await follow_topic(cfg, topic, guarded, ready)


async def _on_signal(stopping: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _sig in signals:
            stopping.set()
            return


async def run_enrich(cfg: Config, *, stop: anyio.Event | None = None,
                     on_flows: Callable[[list[FlowRecord]], Awaitable[None]] | None = None) -> int:
    """``rawcap enrich``: until SIGTERM (or ``stop``), then a final flush and commit."""
    await ensure_topics(cfg)
    index, procs = WorkloadIndex(), ProcIndex()
    interval = int(cfg.get("enrich.flowInterval") * 1e9)
    enricher = Enricher(index, procs, interval, grace_ns=int(cfg.get("enrich.grace") * 1e9),
                        max_flows=cfg.get("enrich.maxFlows"))
    stopping = stop or anyio.Event()
    k8s_ready, procs_ready = anyio.Event(), anyio.Event()

    def apply_k8s(r: Any) -> None:
        if r.key:
            index.apply_value(r.key.decode(), r.value, r.timestamp * 1_000_000)

    def apply_proc(r: Any) -> None:
        if r.value:
            procs.apply_value(r.value)

    producer = BatchProducer(cfg)
    dlq = DeadLetters(cfg, topics.PACKETS, "enrich")
    consumer = AIOKafkaConsumer(topics.PACKETS, **consumer_kwargs(
        cfg, GROUP, max_poll_interval_ms=300_000))
    await producer.start()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_follow, cfg, topics.K8S, apply_k8s, k8s_ready)
            tg.start_soon(_follow, cfg, topics.PROCS, apply_proc, procs_ready)
            tg.start_soon(_on_signal, stopping)
            await k8s_ready.wait()  # workloads first: a flow published without them is wrong
            with anyio.move_on_after(120) as late:
                await procs_ready.wait()
            if late.cancelled_caught:  # process context keeps loading; flows start without it
                log.warning("rawcap.procs not read to its end after 120 s; enriching meanwhile")
            log.info("context loaded", extra=index.stats())
            await consumer.start()
            server = _serve_lag(cfg, consumer, tg)
            try:
                await _enrich_loop(cfg, consumer, producer, dlq, enricher, stopping, on_flows)
            finally:
                await stop_client(consumer)
                if server is not None:
                    server[0].shutdown()
                    server[0].server_close()
            tg.cancel_scope.cancel()
    finally:
        await stop_client(producer)
        await dlq.aclose()
    return 0


def _serve_lag(cfg: Config, consumer: AIOKafkaConsumer, tg: Any) -> Any:
    """With ``metrics.port`` set, the group's lag gauges (``rawcap.kafka.GroupLag``) kept up
    to date in ``tg`` and served on ``/metrics``; returns the server (None when off: nothing
    would read the gauges, so neither they nor prometheus_client are loaded)."""
    port = cfg.get("metrics.port")
    if not port:
        return None
    from prometheus_client import CollectorRegistry

    from rawcap.kafka import GroupLag, serve_metrics

    registry = CollectorRegistry()
    lag = GroupLag(GROUP, registry)
    tg.start_soon(lag.run, consumer)
    return serve_metrics(registry, port)


async def publish_flows(producer: BatchProducer, records: list[FlowRecord],
                        topic: str = topics.FLOWS) -> None:
    """Publish ``records`` to ``topic`` and wait until Kafka has them all: key the node,
    timestamp the first packet (ms), partition the key's (default partitioner), in order,
    one record each (:meth:`~rawcap.kafka.BatchProducer.send_values`)."""
    nodes: dict[str, bytes] = {}
    futures = await producer.send_values(topic, [
        (nodes.get(r.node) or nodes.setdefault(r.node, r.node.encode()), encode_flow(r),
         r.first_ns // 1_000_000) for r in records])
    for fut in futures:
        await fut


async def _enrich_loop(cfg: Config, consumer: AIOKafkaConsumer, producer: BatchProducer, dlq: DeadLetters,
                       enricher: Enricher, stopping: anyio.Event,
                       on_flows: Callable[[list[FlowRecord]], Awaitable[None]] | None) -> None:
    last_prune = time.monotonic()
    while not stopping.is_set():
        # wait for packets at most until a lane's idle time is up, so its flows leave then
        wait = enricher.idle_in()
        timeout = 500 if wait is None else min(500, max(10, math.ceil(wait * 1000)))
        got = await consumer.getmany(timeout_ms=timeout, max_records=200)
        for tp, msgs in got.items():
            for m in msgs:
                try:
                    node = enricher.add_batch(tp.partition, m.offset, m.value)
                    log.debug("batch added", extra={"node": node, "partition": tp.partition,
                                                    "offset": m.offset})
                except BatchError as exc:
                    enricher.corrupt += 1
                    log.warning("corrupt batch to DLQ", extra={"partition": tp.partition,
                                                               "offset": m.offset, "error": str(exc)})
                    await dlq.send(m.value, m.key, exc, tp.partition, m.offset)
        records = enricher.due()
        await _commit(consumer, producer, enricher, records, on_flows)
        horizon = enricher.horizon()
        if time.monotonic() - last_prune > 60 and horizon is not None:
            # keep an hour of closed history behind the oldest packet time still in play,
            # so that replaying older packets still finds the pods of that time
            last_prune = time.monotonic()
            enricher.index.prune(horizon - 3600 * 1_000_000_000)
            enricher.procs.prune(horizon - 3600 * 1_000_000_000)
    final = enricher.flush()
    await _commit(consumer, producer, enricher, final, on_flows)
    log.info("enrich stopped", extra={"flushed_flows": len(final), "packets": enricher.packets,
                                      "corrupt_batches": enricher.corrupt})


async def _commit(consumer: AIOKafkaConsumer, producer: BatchProducer, enricher: Enricher,
                  records: list[FlowRecord],
                  on_flows: Callable[[list[FlowRecord]], Awaitable[None]] | None) -> None:
    if records:
        await publish_flows(producer, records)
        if on_flows is not None:
            await on_flows(records)
        log.debug("flows published", extra={"flows": len(records)})
    # Only what this instance still owns: after a rebalance the others' are not ours to
    # commit (aiokafka refuses them, and they would skip what the new owner has not read).
    enricher.keep_partitions({tp.partition for tp in consumer.assignment()
                              if tp.topic == topics.PACKETS})
    offsets = {TopicPartition(topics.PACKETS, p): o for p, o in enricher.commit_offsets().items()}
    if offsets:
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance under way: the next round commits again
            log.warning("offset commit failed (retried with the next flows): %r", exc)


# -- k8s-watch ------------------------------------------------------------------------------
class _Dirty:
    """A settable, clearable flag to wait on (anyio.Event cannot be cleared)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


async def run_k8s_watch(cfg: Config, *, kubeconfig: str = "", planner: FilterPlanner | None = None,
                        stop: anyio.Event | None = None, settle_s: float = 0.5,
                        election: Election | None = None) -> int:
    """``rawcap k8s-watch``: API -> ``rawcap.k8s``, and capture filters -> ``rawcap.control``.

    With ``election`` only the holder of that Lease watches and publishes; the others wait
    to take over (:class:`~enrich._lease.LeaseElector`). Until SIGTERM (or ``stop``).
    A request the API server forbids (401/403) ends it with one :class:`ConfigError` line.
    """
    api = await api_client(kubeconfig or cfg.get("k8s.kubeconfig"))
    stopping = stop or anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_on_signal, stopping)
            if election is not None:
                elector = LeaseElector(api, election.name, election.namespace, election.identity,
                                       lease_duration=election.duration)
                tg.start_soon(elector.run, lambda: _watch_session(cfg, api, planner, settle_s))
            else:
                tg.start_soon(_watch_session, cfg, api, planner, settle_s)
            await stopping.wait()
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first_rawcap_error(group) or group from None
    finally:
        with anyio.move_on_after(5, shield=True):
            await api.close()
    return 0


@dataclass(frozen=True, slots=True)
class Election:
    """Where ``k8s-watch --leader-elect`` keeps its Lease, and who this candidate is."""

    name: str
    namespace: str
    identity: str
    duration: float = 15.0


def _first_rawcap_error(group: BaseExceptionGroup) -> RawcapError | None:
    for exc in group.exceptions:
        if isinstance(exc, RawcapError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (inner := _first_rawcap_error(exc)) is not None:
            return inner
    return None


async def _watch_session(cfg: Config, api: Any, planner: FilterPlanner | None, settle_s: float) -> None:
    """Read what rawcap.k8s and rawcap.control hold, then watch and publish until cancelled."""
    await ensure_topics(cfg)
    on_topic: set[str] = set()

    def seen_k8s(r: Any) -> None:
        if r.key:
            (on_topic.add if r.value is not None else on_topic.discard)(r.key.decode())

    def seen_control(r: Any) -> None:
        if planner is not None and r.key and r.key.startswith(b"filter/") and r.value:
            f = decode_control(r.value)
            if isinstance(f, CaptureFilter):
                planner.seed(r.key.decode(), f)

    await read_topic_to_end(cfg, topics.K8S, seen_k8s)
    await read_topic_to_end(cfg, topics.CONTROL, seen_control)
    index = WorkloadIndex()
    dirty = _Dirty()
    synced_kinds: set[str] = set()
    producer = AIOKafkaProducer(**producer_kwargs(cfg))
    await producer.start()
    send, recv = anyio.create_memory_object_stream[Change](1000)

    async def on_synced(kind: str, cache: Any) -> None:
        if kind in synced_kinds:
            return
        synced_kinds.add(kind)
        prefix = kind + "/"
        stale = [k for k in on_topic if k.startswith(prefix)]
        for ch in cache.forget_unknown(stale, time.time_ns()):
            await send.send(ch)

    watcher = Watcher(api, on_synced=on_synced)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            tg.start_soon(_publish_changes, producer, recv, index, dirty)
            if planner is not None:
                tg.start_soon(_publish_filters, producer, planner, index, watcher, dirty, settle_s)
    finally:
        await stop_client(producer)


async def _publish_changes(producer: AIOKafkaProducer, recv: Any, index: WorkloadIndex,
                           dirty: _Dirty) -> None:
    async with recv:
        pending = []
        while True:
            ch: Change = await recv.receive()
            batch = [ch]
            while True:  # take what is already queued, publish it as one burst
                try:
                    batch.append(recv.receive_nowait())
                except anyio.WouldBlock:
                    break
            for c in batch:
                value = None if c.record is None else encode_k8s(c.record)
                pending.append(await producer.send(topics.K8S, value, key=c.key.encode(),
                                                   timestamp_ms=c.ts_ns // 1_000_000))
                index.apply(c.key, c.record, c.ts_ns)
            for fut in pending:
                await fut
            pending.clear()
            if any(c.key.startswith(("pod/", "node/")) for c in batch):
                dirty.set()


async def _publish_filters(producer: AIOKafkaProducer, planner: FilterPlanner, index: WorkloadIndex,
                           watcher: Watcher, dirty: Any, settle_s: float) -> None:
    await watcher.wait_synced()
    while True:
        await dirty.wait()
        await anyio.sleep(settle_s)  # a rollout changes many pods: publish once it settles
        dirty.clear()
        nodes = set(index.nodes()) | {p.node for p in index.pods() if p.node}
        changed = planner.plan(list(index.pods()), sorted(nodes))
        for key, f in changed.items():
            await producer.send_and_wait(topics.CONTROL, f.encode(), key=key.encode())
            log.info("capture filter published", extra={
                "key": key, "filter_version": f.version, "allow_ips": len(f.allow_ips),
                "deny_ips": len(f.deny_ips)})
