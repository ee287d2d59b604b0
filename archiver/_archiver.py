"""The archive consumer: ``rawcap.packets`` -> data and index objects, offsets committed after.

One root task group owns every task: the fetch loop (``getmany(max_records=...)``, manual
commits), ``uploads`` upload workers fed through a memory object stream, a flush timer, a
committer, the lag reporter, the retention sweep and the signal handler. Memory is bounded:
open buffers are closed (largest first) beyond two objects' worth, and fetching pauses while
closed-but-unwritten objects exceed ``uploads + 2`` objects (the consumer keeps polling, so
it stays in its group through a long bucket outage).

aiokafka's consumer runs the group; with a plaintext Kafka a *lane* task reads each assigned
partition (paused in aiokafka) through ``rawcap.kafka.AssignedFetchers``, a fraction of
aiokafka's fetch cost; what that client leaves to aiokafka (TLS, SASL, a leader change, an
offset out of range) aiokafka's fetcher reads on from the offset reached (docs/archiver.md).

SIGTERM/SIGINT: stop fetching, close every buffer, let the workers write them (for at most
``shutdown_timeout`` seconds), commit, leave the group, exit 0. A second signal, or the
deadline, abandons what is not written; its offsets stay uncommitted (exit 1).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from typing import Any

import anyio
import anyio.abc
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from rawcap import kafka
from rawcap.archive import (
    ArchiveStore,
    escape_node,
    hour_of,
    hour_path,
    object_parts,
)
from rawcap.config import Config
from rawcap.hooks import hook
from rawcap.kafka import GroupLag, Unsupported
from schemas import decode_header, topics
from schemas.errors import BatchError, ConfigError, RawcapError, TransportError

from ._metrics import Metrics
from ._plan import Buffer, Known, PartitionPlan, known_objects
from ._retention import retention_loop
from ._summary import Summary, one_error

__all__ = ("GROUP", "Archiver")

log = logging.getLogger("rawcap.archive")

GROUP = "rawcap-archiver"


class _Listener(ConsumerRebalanceListener):
    def __init__(self, archiver: Archiver) -> None:
        self._a = archiver

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._a._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._a._assigned(set(assigned))


class Archiver:
    """``async with``-free: :meth:`run` owns its clients from start to exit."""

    #: Read assigned partitions through the project's fetch client where it can.
    wire_reads = True

    def __init__(
        self,
        cfg: Config,
        *,
        group: str = GROUP,
        uploads: int = 4,
        max_records: int = 1000,
        session_timeout: float = 10.0,
        shutdown_timeout: float = 60.0,
        revoke_timeout: float = 30.0,
        metrics: Metrics | None = None,
        topic: str = topics.PACKETS,
    ) -> None:
        self.cfg = cfg
        self.topic = topic
        self.store = ArchiveStore.from_config(cfg)
        self.object_size = int(cfg.get("archive.objectSize"))
        self.flush_interval = float(cfg.get("archive.flushInterval"))
        self.retention = float(cfg.get("archive.retention"))
        if self.object_size < 4096:
            raise ConfigError(f"archive.objectSize = {self.object_size} is invalid: expected at least 4Ki")
        if self.flush_interval <= 0:
            raise ConfigError("archive.flushInterval = 0 is invalid: expected a positive duration, like 2m")
        if self.retention and self.retention < 3600:
            raise ConfigError("archive.retention is invalid: expected 0 (keep) or at least 1h")
        if uploads < 1 or max_records < 1:
            raise ConfigError("--uploads and --max-records must be positive")
        self.group = group
        self.uploads = uploads
        self.max_records = max_records
        self.session_timeout = session_timeout
        self.shutdown_timeout = shutdown_timeout
        self.revoke_timeout = revoke_timeout
        self.metrics = metrics or Metrics()
        self.group_lag = GroupLag(group, self.metrics.registry)  # rawcap_consumer_lag_*
        self.summary = Summary()
        self.plans: dict[int, PartitionPlan] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self._dead_letters = kafka.DeadLetters(cfg, topic, "archiver")
        self._lock = anyio.Lock()
        self._commit_lock = anyio.Lock()
        self._send, self._recv = anyio.create_memory_object_stream[Buffer](math.inf)
        self._queued_bytes = 0  # closed buffers not yet written
        self._cap = max(8 * 1024 * 1024, (uploads + 2) * self.object_size)
        self._dirty = anyio.Event()
        self._progress = anyio.Event()  # set (and replaced) whenever an object is written
        self._closing = False
        self._fetch_scope = anyio.CancelScope()
        self._drain_scope = anyio.CancelScope()
        # Partitions read through the project's fetch client, each by a lane task.
        self._wire: Any = (kafka.AssignedFetchers(cfg, topic)
                           if self.wire_reads and kafka.wire_enabled(cfg) else None)
        self._wire_parts: set[int] = set()
        self._highwater: dict[int, int] = {}  # as the lanes' fetches report it
        self._lane_scopes: dict[int, anyio.CancelScope] = {}
        self._lane_send, self._lane_recv = anyio.create_memory_object_stream[TopicPartition](math.inf)

    # -- lifecycle ---------------------------------------------------------------------------
    async def probe(self, retry_for: float = 30.0) -> None:
        """The bucket must exist and take a write before anything is consumed."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                await self.store.probe()
                return
            except TransportError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("archive store not reachable yet: %s", exc)
                await anyio.sleep(1.0)

    async def run(self) -> int:
        """Archive until SIGTERM/SIGINT; returns the exit code."""
        await self.probe()
        await kafka.ensure_topics(self.cfg, retry_for=30.0)
        kw = kafka.consumer_kwargs(
            self.cfg,
            self.group,
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=max(500, int(self.session_timeout * 1000 / 4)),
            check_crcs=False,  # the broker checked them; every body has a zstd checksum
        )
        consumer = self.consumer = AIOKafkaConsumer(**kw)
        consumer.subscribe([self.topic], listener=_Listener(self))
        try:
            with anyio.fail_after(30):
                await consumer.start()
        except (KafkaError, TimeoutError, OSError) as exc:
            await consumer.stop()
            where = ",".join(kw["bootstrap_servers"])
            raise TransportError(f"cannot reach Kafka at {where}: {exc!r}") from None
        port = self.cfg.get("metrics.port")
        if port:
            self.metrics.serve(port)
        log.info(
            "archiver running",
            extra={"group": self.group, "url": self.store.url, "objectSize": self.object_size,
                   "flushInterval": self.flush_interval},
        )
        code = 0
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                tg.start_soon(self._timer)
                tg.start_soon(self._committer)
                tg.start_soon(self._lag_loop)
                if self.retention:
                    tg.start_soon(self._retention_loop)
                code = await self._main()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as eg:
            raise one_error(eg) from None
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(20):
                    await consumer.stop()
                await self._dead_letters.aclose()
                self.metrics.close()
                if self._wire is not None:
                    self._wire.close()
        return code

    async def _main(self) -> int:
        with self._drain_scope:
            async with anyio.create_task_group() as workers:
                for _ in range(self.uploads):
                    workers.start_soon(self._uploader, self._recv.clone())
                self._recv.close()
                with self._fetch_scope:
                    async with anyio.create_task_group() as lanes:
                        lanes.start_soon(self._lanes, lanes)
                        await self._fetch_loop()
                async with self._lock:
                    for plan in self.plans.values():
                        for buf in plan.close_all():
                            self._queue(buf)
                    self._closing = True
                self._send.close()
        code = 0
        if self._drain_scope.cancelled_caught:
            left = sum(len(p.uploading) for p in self.plans.values())
            log.error("shutdown: %d object(s) not written in time; their offsets stay uncommitted", left)
            code = 1
        with anyio.CancelScope(shield=True):
            await self._commit_now()
        log.info("archiver stopped", extra=dict(vars(self.summary)))
        return code

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        """First SIGTERM/SIGINT: final flush, commit, exit; the second abandons uploads."""
        if not self._fetch_scope.cancel_called:
            log.info("signal %d: final flush, then commit and exit", signum)
            self._drain_scope.deadline = anyio.current_time() + self.shutdown_timeout
            self._fetch_scope.cancel()
        else:
            log.warning("second signal: abandoning uploads in flight")
            self._drain_scope.cancel()

    # -- fetching ----------------------------------------------------------------------------
    def _queue(self, buf: Buffer) -> None:
        if self._closing or not buf.batches:
            buf.plan.written(buf)
            return
        self._queued_bytes += buf.size
        self._send.send_nowait(buf)

    def _under_pressure(self) -> bool:
        open_bytes = sum(p.open_bytes for p in self.plans.values())
        while open_bytes > 2 * self.object_size:
            for plan in sorted(self.plans.values(), key=lambda p: -p.open_bytes):
                buf = plan.largest()
                if buf is not None:
                    self._queue(buf)
                    open_bytes -= buf.size
                    break
            else:
                break
        self.metrics.buffered_bytes.set(open_bytes + self._queued_bytes)
        return self._queued_bytes > 0 and self._queued_bytes + open_bytes > self._cap

    async def _keepalive(self) -> None:
        """Stay in the group without taking records (pressure, or a store outage)."""
        c = self.consumer
        assert c is not None
        c.pause(*c.assignment())
        await c.getmany(timeout_ms=200)

    async def _fetch_loop(self) -> None:
        c = self.consumer
        assert c is not None
        while True:
            if self._under_pressure():
                await self._keepalive()
                continue
            paused = {tp for tp in c.paused() & c.assignment() if tp.partition not in self._wire_parts}
            if paused:
                c.resume(*paused)
            got = await c.getmany(timeout_ms=500, max_records=self.max_records)
            if not got:
                continue
            async with self._lock:
                for tp, recs in got.items():
                    for r in recs:
                        plan = self.plans.get(tp.partition)
                        if plan is None or plan.revoked:
                            break
                        await self._take(plan, r)

    async def _lanes(self, tg: anyio.abc.TaskGroup) -> None:
        async for tp in self._lane_recv:
            tg.start_soon(self._lane, tp)

    async def _lane(self, tp: TopicPartition) -> None:
        """One assigned partition through the project's fetch client, until it is revoked or
        that client meets what it leaves to aiokafka."""
        c, wire = self.consumer, self._wire
        assert c is not None and wire is not None
        plan = self.plans.get(tp.partition)
        scope = self._lane_scopes.get(tp.partition)
        if plan is None or plan.revoked or scope is None:
            return
        offset, fetcher, handover = None, None, hook("archive-handover")
        with scope:
            try:
                offset = await c.position(tp)  # the committed offset, else the reset policy's
                fetcher = await anyio.to_thread.run_sync(wire.open, tp.partition, offset)
                while True:
                    while self._under_pressure():  # until an upload makes room
                        progress = self._progress
                        with anyio.move_on_after(1.0):
                            await progress.wait()
                    recs, offset = await fetcher.next(1 << 62)
                    self._highwater[tp.partition] = fetcher.highwater
                    async with self._lock:
                        if plan.revoked:
                            return
                        for r in recs:
                            await self._take(plan, r)
                        c.seek(tp, offset)  # aiokafka's position: what the group lag gauge reads
                        if offset >= fetcher.highwater >= 0:  # at the end: no timer tick to wait
                            for buf in plan.due(time.monotonic(), self.flush_interval,
                                                caught_up_ms=int(time.time() * 1000)):
                                self._queue(buf)
                    if recs and handover:
                        raise Unsupported("test hook archive-handover")
            except (Unsupported, OSError, KafkaError) as exc:
                if plan.revoked:
                    return
                at = plan.position if plan.position is not None else offset
                log.info("partition %d: reading on with aiokafka from offset %s (%s)",
                         tp.partition, at, exc)
                self._wire_parts.discard(tp.partition)
                if at is not None:  # else aiokafka resolves the group's position itself
                    c.seek(tp, at)
            finally:
                if fetcher is not None:
                    fetcher.cancel()

    async def _take(self, plan: PartitionPlan, r: Any) -> None:
        try:
            if r.value is None:
                raise BatchError("record has no value")
            header, _ = decode_header(r.value)
        except BatchError as exc:
            await self._dlq(r, exc, plan.partition)
            plan.skip(r.offset)
            return
        await self._place(plan, r, header, hour_of(header.first_ns))

    async def _place(self, plan: PartitionPlan, r: Any, header: Any, hour: int) -> None:
        """Hand one decoded record to its plan (``header.node`` names its object group)."""
        if plan.needs_lookup(header.node, hour):
            known = await self._lookup(plan, header.node, hour)
            plan.set_known(header.node, hour, known)
            if known:
                log.info("resuming: objects of this partition exist already", extra={
                    "node": header.node, "hour": hour_path(hour), "partition": plan.partition,
                    "indexed": sum(k.indexed for k in known),
                    "unindexed": sum(not k.indexed for k in known)})
        before_skip, before_adopt = plan.skipped, plan.adopted
        for buf in plan.add(r.offset, r.value, header, hour, r.timestamp):
            self._queue(buf)
        if plan.skipped != before_skip:
            self.summary.skipped += 1
            self.metrics.skipped.inc()
        if plan.adopted != before_adopt:
            self.summary.adopted += 1
            self.metrics.adopted.inc()
            log.info("completing an object written before a crash", extra={"node": header.node,
                                                                           "offset": r.offset})

    async def _lookup(self, plan: PartitionPlan, node: str, hour: int) -> list[Known]:
        """Objects of this partition already in the store for (node, hour)."""
        hp = hour_path(hour)
        data, index = await self._list_retrying(f"node={escape_node(node)}/{hp}",
                                                f"index/{hp}/node={escape_node(node)}")

        return known_objects(plan.topic, plan.partition, [m["path"] for m in data],
                             [m["path"] for m in index])

    async def _list_retrying(self, *prefixes: str) -> list[list[dict[str, Any]]]:
        """The objects under each prefix; a failing store is retried (staying in the group)."""
        delay = 0.5
        while True:
            try:
                return [await self.store.alist(prefix) for prefix in prefixes]
            except RawcapError as exc:
                self.metrics.errors.labels("list").inc()
                self.summary.errors += 1
                log.warning("archive listing failed, retrying: %s", exc)
                with anyio.move_on_after(delay):
                    while True:
                        await self._keepalive()
                delay = min(delay * 2, 5.0)

    async def _dlq(self, r: Any, exc: Exception, partition: int) -> None:
        self.summary.dlq += 1
        self.metrics.dlq.inc()
        log.warning("corrupt batch skipped: %s", exc,
                    extra={"partition": partition, "offset": r.offset})
        if r.value is None:
            return
        try:  # best effort: counted and logged above either way
            await self._dead_letters.send(r.value, r.key, exc, partition, r.offset)
        except Exception as dexc:
            log.warning("could not send corrupt batch to %s: %r", topics.DLQ, dexc)

    # -- rebalancing -------------------------------------------------------------------------
    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            for tp in assigned:
                if tp.topic == self.topic and tp.partition not in self.plans:
                    self.plans[tp.partition] = PartitionPlan(tp.topic, tp.partition, self.object_size)
                    if self._wire is not None and self.consumer is not None:
                        self.consumer.pause(tp)  # aiokafka keeps the group; a lane reads
                        self._wire_parts.add(tp.partition)
                        self._lane_scopes[tp.partition] = anyio.CancelScope()
                        self._lane_send.send_nowait(tp)
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned),
                 extra={"group": self.group})

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            plans = [self.plans[tp.partition] for tp in revoked if tp.partition in self.plans]
            for plan in plans:
                plan.revoked = True
                self._wire_parts.discard(plan.partition)
                lane = self._lane_scopes.pop(plan.partition, None)
                if lane is not None:
                    lane.cancel()
                for buf in plan.close_all():
                    self._queue(buf)
        deadline = time.monotonic() + (0 if self._closing else self.revoke_timeout)
        while any(p.uploading for p in plans) and time.monotonic() < deadline:
            progress = self._progress
            with anyio.move_on_after(deadline - time.monotonic()):
                await progress.wait()
        for plan in plans:
            if plan.uploading:
                plan.abandoned = True
                log.warning("partition %d revoked with %d object(s) not written: the next owner "
                            "archives them again", plan.partition, len(plan.uploading))
        await self._commit_now(plans)
        for plan in plans:
            self.plans.pop(plan.partition, None)
            try:
                self.metrics.lag_records.remove(str(plan.partition))
            except KeyError:
                pass
        if revoked:
            log.info("revoked partitions %s", sorted(tp.partition for tp in revoked))

    # -- writing -----------------------------------------------------------------------------
    async def _uploader(self, recv: Any) -> None:
        async with recv:
            async for buf in recv:
                written = False
                try:
                    await self._write(buf)
                    written = True
                finally:
                    self._queued_bytes -= buf.size
                    if written:  # a cancelled write stays in plan.uploading: never committed
                        buf.plan.written(buf)
                        self._dirty.set()
                        progress, self._progress = self._progress, anyio.Event()
                        progress.set()

    async def _write(self, buf: Buffer) -> None:
        plan = buf.plan
        if plan.abandoned:
            return
        # crc32 of every batch (GIL released) off the event loop; the pieces are not joined.
        entry, data = await anyio.to_thread.run_sync(
            object_parts, buf.node, buf.hour, plan.topic, plan.partition, buf.batches)
        packets = buf.packets
        buf.batches = []  # the object holds them now
        t = await self._put_retrying(plan, [("put_data", entry.data_key, data),
                                            ("put_index", entry.index_key, entry.to_json())])
        if t is None:
            return
        m, s = self.metrics, self.summary
        m.upload_seconds.observe(time.monotonic() - t)
        m.objects_written.inc()
        m.index_written.inc()
        m.bytes_written.inc(entry.size)
        m.batches_written.inc(len(entry.frames))
        m.packets_written.inc(packets)
        s.objects += 1
        s.batches += len(entry.frames)
        s.packets += packets
        s.bytes += entry.size
        log.debug("wrote %s", entry.data_key, extra={"bytes": entry.size, "batches": len(entry.frames)})

    async def _put_retrying(self, plan: PartitionPlan, puts: list[tuple[str, str, Any]]) -> float | None:
        """PUT each (op, key, data) in order, retrying with backoff until all are written;
        returns when the successful attempt started, or None if the partition was abandoned."""
        delay, failing_since, last_log = 0.5, 0.0, 0.0
        while True:
            op = puts[0][0]
            t = time.monotonic()
            try:
                for i, put in enumerate(puts):
                    op, key, body = put
                    await self.store.put(key, body)
                    if plan.abandoned and i < len(puts) - 1:
                        return None
                break
            except RawcapError as exc:
                self.metrics.errors.labels(op).inc()
                self.summary.errors += 1
                now = time.monotonic()
                if not failing_since:
                    failing_since = last_log = now
                    log.warning("archive write failed, retrying with backoff: %s", exc)
                elif now - last_log > 30:
                    last_log = now
                    log.warning("archive writes failing for %.0f s: %s", now - failing_since, exc)
                await anyio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 5.0)
        if failing_since:
            log.info("archive writes recovered after %.1f s", time.monotonic() - failing_since)
        return t

    # -- offsets and housekeeping ------------------------------------------------------------
    async def _commit_now(self, plans: list[PartitionPlan] | None = None) -> None:
        c = self.consumer
        if c is None:
            return
        async with self._commit_lock:
            todo: dict[TopicPartition, tuple[int, PartitionPlan]] = {}
            for plan in plans if plans is not None else list(self.plans.values()):
                point = plan.to_commit()
                if point is not None and not plan.abandoned:
                    todo[TopicPartition(plan.topic, plan.partition)] = (point, plan)
            if not todo:
                return
            try:
                with anyio.fail_after(30):
                    await c.commit({tp: point for tp, (point, _p) in todo.items()})
            except (KafkaError, TimeoutError, RuntimeError) as exc:
                log.warning("offset commit failed (it is retried; after a rebalance the next owner "
                            "resumes from the last commit): %r", exc)
                return
            for point, plan in todo.values():
                plan.committed = point
            self.summary.commits += 1
            self.metrics.commits.inc()

    async def _committer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            await self._commit_now()
            await anyio.sleep(0.2)

    async def _timer(self) -> None:
        tick = max(0.05, min(1.0, self.flush_interval / 4))
        while True:
            await anyio.sleep(tick)
            if self._closing:
                continue
            async with self._lock:
                now, now_ms = time.monotonic(), int(time.time() * 1000)
                for plan in list(self.plans.values()):
                    hw = self._highwater_of(plan)
                    caught_up = hw is not None and plan.position is not None and plan.position >= hw
                    for buf in plan.due(now, self.flush_interval, caught_up_ms=now_ms if caught_up else None):
                        self._queue(buf)
            self._dirty.set()  # commits positions that moved past skipped batches

    def _highwater_of(self, plan: PartitionPlan) -> int | None:
        """The partition's high watermark as its reader last saw it (None: not known yet)."""
        hw = self._highwater.get(plan.partition, -1) if plan.partition in self._wire_parts else None
        if hw is None and self.consumer is not None:
            hw = self.consumer.highwater(TopicPartition(plan.topic, plan.partition))
        return hw if hw is not None and hw >= 0 else None

    async def _lag_loop(self) -> None:
        c = self.consumer
        assert c is not None
        while True:
            oldest: list[int] = []
            for plan in list(self.plans.values()):
                hw = self._highwater_of(plan)
                done = plan.committed if plan.committed is not None else plan.position
                if hw is not None and done is not None:
                    self.metrics.lag_records.labels(str(plan.partition)).set(max(0, hw - done))
                ts = plan.oldest_ms()
                if ts is not None:
                    oldest.append(ts)
            self.metrics.lag_seconds.set(max(0.0, time.time() - min(oldest) / 1000) if oldest else 0.0)
            await self.group_lag.update(c)
            await anyio.sleep(2.0)

    async def _retention_loop(self) -> None:
        # One sweeper per group: the holder of partition 0.
        await retention_loop(self.store, self.retention, lambda: 0 in self.plans, self.metrics)
