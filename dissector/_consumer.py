"""Dissection from Kafka: bounded range replay, live ``--follow``, and the on/off switch.

Range replay (``--from/--to``) reads exactly that window through ``rawcap.window`` (exact
offsets from ``offsets_for_times``, packets trimmed to the window, nodes merged in time
order), so replaying the same range twice yields the same calls. Live dissection is a
consumer group (``rawcap-dissector``): instances split the partitions, each keeps one
``Dissector`` per node, and offsets are committed only after the calls of the fetched
batches were produced to ``rawcap.calls`` and written to the local store. A flow that spans
a restart is picked up mid-stream (the parsers resynchronise).

``--follow`` honours the switch on ``rawcap.control`` (``rawcap dissection start|stop``),
``tap.capture.stopped`` (the initial state when no switch record exists) and
``tap.capture.stopAfter`` (stop after that long without packets; 0 = never).

Workload names: a range loads ``rawcap.k8s`` once before reading packets; ``--follow``
keeps following it in its task group (cancelled with the rest). ``--no-k8s`` skips both; an
unreachable topic leaves calls unnamed (``dissector._workloads``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import anyio

from rawcap.config import Config, parse_duration
from rawcap.timeparse import parse_window
from schemas import BODY_RECORDS, decode_batch, iter_packets, topics
from schemas.calls import CALLS_RECORD_BYTES, Call, encode_calls
from schemas.control import DISSECTION_KEY, DissectionSwitch, decode_control
from schemas.errors import BatchError, ConfigError, RecordOverrun, TransportError

from ._engine import Dissector
from ._run import CallOutput, Flushed, db_path, dissector_from_config
from ._store import CallStore
from ._workloads import READY_WAIT_S, follow_workloads, load_workloads

if TYPE_CHECKING:
    from rawcap.window import RawBatch
    from rawcap.workloads import Workloads

__all__ = ("GROUP_ID", "dissection_switch", "read_switch", "run_dissect")

GROUP_ID = "rawcap-dissector"
FETCH_RECORDS = 64
log = logging.getLogger("rawcap.dissector")


def _kafka_errors() -> tuple[type[BaseException], ...]:
    from aiokafka.errors import KafkaError

    return (KafkaError, OSError, TimeoutError)


class _Nodes:
    """One Dissector per node (flows of different nodes never mix)."""

    def __init__(self, cfg: Config, out: CallOutput, redact: bool) -> None:
        self.cfg = cfg
        self.out = out
        self.redact = redact
        self.by_node: dict[str, Dissector] = {}

    def get(self, node: str) -> Dissector:
        d = self.by_node.get(node)
        if d is None:
            d = dissector_from_config(self.cfg.with_overrides({"node.name": node}), self.out,
                                      redact=self.redact)
            self.by_node[node] = d
        return d

    def finish(self) -> None:
        for d in self.by_node.values():
            d.finish()

    def stats(self) -> dict[str, Any]:
        return {n: d.stats() for n, d in self.by_node.items()}


_HOUR_NS = 3_600_000_000_000
_node, _req_ts = attrgetter("node"), attrgetter("req_ts_ns")


class _Publisher:
    """Produces calls to ``rawcap.calls`` as version-2 records (``schemas.calls``): the rows
    of one flush, per node (the key) and UTC hour of the calls' time (the Parquet tables file
    a record under one hour), in records of at most ``CALLS_RECORD_BYTES``; sends
    are not awaited one by one, at most ``MAX_PENDING`` wait for their acknowledgement."""

    MAX_PENDING = 16

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self._futures: list[Any] = []

    async def publish(self, flushed: Flushed) -> None:
        """Queue the flushed calls; raises what an earlier record's delivery raised."""
        calls, rows = flushed
        if not calls:
            return
        assert rows is not None, "CallOutput(publish=True) when publishing"
        for node, node_rows in _by_node_hour(calls, rows):
            key = node.encode()
            for part in _records(node_rows):
                await self._send(key, part)

    async def _send(self, key: bytes, rows: list[bytes]) -> None:
        self._futures.append(await self.producer.send(topics.CALLS, encode_calls(rows), key=key))
        if len(self._futures) > self.MAX_PENDING:
            done, self._futures = self._futures[:-self.MAX_PENDING // 2], \
                self._futures[-self.MAX_PENDING // 2:]
            for f in done:
                await f

    async def wait(self) -> None:
        """Wait until every queued record is delivered (or raise why it was not)."""
        futures, self._futures = self._futures, []
        for f in futures:
            await f


def _by_node_hour(calls: list[Call], rows: list[bytes]) -> list[tuple[str, list[bytes]]]:
    """The rows grouped by the calls' node and UTC hour (in order of first appearance)."""
    nodes = list(map(_node, calls))
    tss = list(map(_req_ts, calls))
    if 0 in tss:  # no request: the response's time
        tss = [c.req_ts_ns or c.resp_ts_ns for c in calls]
    if nodes.count(nodes[0]) == len(nodes) and min(tss) // _HOUR_NS == max(tss) // _HOUR_NS:
        return [(nodes[0], rows)]  # the common case: one node, one hour
    groups: dict[tuple[str, int], list[bytes]] = {}
    for node, ts, row in zip(nodes, tss, rows, strict=True):
        groups.setdefault((node, ts // _HOUR_NS), []).append(row)
    return [(node, group) for (node, _hour), group in groups.items()]


def _records(rows: list[bytes]) -> Iterator[list[bytes]]:
    """``rows`` in order, cut into records of at most ``CALLS_RECORD_BYTES`` (a row larger
    than that alone in its record)."""
    ends = list(accumulate(map(len, rows)))
    start, base = 0, 0
    while start < len(rows):
        end = max(bisect_right(ends, base + CALLS_RECORD_BYTES, start), start + 1)
        yield rows[start:end]
        start, base = end, ends[end - 1]


async def _publisher(cfg: Config) -> Any:
    from rawcap.kafka import make_producer

    producer = make_producer(cfg)
    try:
        with anyio.fail_after(30):
            await producer.start()
    except _kafka_errors() as exc:
        await producer.stop()
        raise TransportError(f"cannot reach Kafka at {cfg.get('kafka.bootstrap')}: {exc!r}") \
            from None
    return producer


def _output(args: argparse.Namespace, cfg: Config,
            workloads: Workloads | None = None) -> CallOutput:
    store = None if args.no_store else CallStore(db_path(cfg, args.db),
                                                 cfg.get("tap.capture.dbMaxSize"))
    return CallOutput(store=store, out=None if args.quiet else sys.stdout, as_json=args.json,
                      workloads=workloads, publish=not args.no_publish)


async def run_dissect(args: argparse.Namespace, cfg: Config) -> int:
    if args.follow:
        return await _follow(args, cfg)
    from rawcap.window import RawBatch, WindowReader

    source = args.source
    node_list = [args.node] if args.node else None
    match = None
    if source.startswith("snapshot:"):
        # The snapshot's own window (narrowed by --from/--to) and stored filters, exactly as
        # 'rawcap snapshot export' applies them.
        from rawcap.snapshots import open_snapshot

        snap = await open_snapshot(
            cfg, source.split(":", 1)[1], nodes=node_list,
            window=parse_window(args.from_, args.to) if (args.from_ or args.to) else None)
        reader_ctx = snap.reader
        match = None if snap.filter.empty else snap.filter.match
    else:
        if not args.from_:
            raise ConfigError("rawcap dissect needs --from (a range), --follow (live), "
                              "--source snapshot:ID or --pcap FILE")
        lo, hi = parse_window(args.from_, args.to)
        reader_ctx = WindowReader(cfg, lo, hi, nodes=node_list, source=source)

    # rawcap.k8s once: each call is named as of its own request time, so one load serves
    # the whole range (IPs reused within it resolve to each owner's interval)
    out = _output(args, cfg, await load_workloads(cfg, getattr(args, "k8s", None)))
    nodes = _Nodes(cfg, out, not args.no_redact)
    producer = None
    try:
        producer = None if args.no_publish else await _publisher(cfg)
        pub = None if producer is None else _Publisher(producer)
        async with reader_ctx as reader:
            async for item in reader.items(match=match):
                if isinstance(item, RawBatch):
                    await _dissect_batch(reader, nodes, item)
                else:
                    for p in item:
                        nodes.get(p.node).packet(p.ts_ns, p.data)
                if pub is not None:
                    for flushed in out.take():
                        await pub.publish(flushed)
            if args.node:
                await reader.check_nodes()  # a typo'd node: say so rather than print nothing
        nodes.finish()
        if pub is not None:
            for flushed in out.take():
                await pub.publish(flushed)
            await pub.wait()
        out.close()
    finally:
        if producer is not None:
            with anyio.CancelScope(shield=True):
                await producer.stop()
        out.close()
    if args.stats:
        print(json.dumps({"dissector": nodes.stats()}), file=sys.stderr)
    log.info("range dissected", extra={"calls": out.count})
    return 0


async def _dissect_batch(reader: Any, nodes: _Nodes, item: RawBatch) -> None:
    """A whole in-window batch: its body walked by the engine (no per-packet objects)."""
    h = item.header
    d = nodes.get(h.node)
    if h.body == BODY_RECORDS:
        body = item.body if type(item.body) is bytes else bytes(item.body)
        n, end = d.run_records(body)
        if n == h.count and end == len(body):
            return
        # what came before the damage is dissected; the batch is reported like any other
        await reader.corrupt_batch(item, RecordOverrun(
            f"rec body: {n} whole records of {h.count} announced, {len(body) - end} bytes "
            "left over"))
        return
    try:
        packets = list(iter_packets(h, item.body))
    except BatchError as exc:
        await reader.corrupt_batch(item, exc)
        return
    pkt = d.packet
    for p in packets:
        pkt(p.ts_ns, p.data)


async def _partitions(consumer: Any, topic: str) -> set[int]:
    """Partitions of ``topic``; an unsubscribed consumer has no metadata for it yet."""
    from rawcap.kafka import topic_partitions

    return {tp.partition for tp in await topic_partitions(consumer, topic, wait_s=0)}


async def read_switch(cfg: Config) -> DissectionSwitch | None:
    """The newest ``dissection`` record on ``rawcap.control`` (None when there is none)."""
    from aiokafka import TopicPartition

    from rawcap.kafka import make_consumer

    consumer = make_consumer(cfg)
    try:
        with anyio.fail_after(30):
            await consumer.start()
        parts = await _partitions(consumer, topics.CONTROL)
        tps = [TopicPartition(topics.CONTROL, p) for p in sorted(parts)]
        if not tps:
            return None
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        latest: tuple[int, DissectionSwitch] | None = None
        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < end[tp]:
                    return True
            return False

        while await behind():
            got = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for recs in got.values():
                for r in recs:
                    if r.key != DISSECTION_KEY.encode() or r.value is None:
                        continue
                    try:
                        sw = decode_control(r.value)
                    except (ValueError, KeyError, TypeError):
                        continue
                    if isinstance(sw, DissectionSwitch) and (latest is None
                                                             or r.timestamp >= latest[0]):
                        latest = (r.timestamp, sw)
        return latest[1] if latest else None
    except _kafka_errors() as exc:
        raise TransportError(f"cannot read {topics.CONTROL}: {exc!r}") from None
    finally:
        await consumer.stop()


async def dissection_switch(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "status":
        sw = await read_switch(cfg)
        if sw is None:
            enabled = not cfg.get("tap.capture.stopped")
            doc = {"enabled": enabled, "stop_after_s": cfg.get("tap.capture.stopAfter"),
                   "source": "config (no switch record on rawcap.control)"}
        else:
            doc = {"enabled": sw.enabled, "stop_after_s": sw.stop_after_s,
                   "changed_by": sw.changed_by, "source": topics.CONTROL}
        if args.json:
            print(json.dumps(doc))
        else:
            print(f"real-time dissection: {'started' if doc['enabled'] else 'stopped'} "
                  f"(stopAfter {doc['stop_after_s']:g}s; from {doc['source']})")
        return 0
    stop_after = (parse_duration(args.stop_after) if args.stop_after
                  else cfg.get("tap.capture.stopAfter"))
    sw = DissectionSwitch(enabled=args.action == "start", stop_after_s=stop_after,
                          changed_by=f"rawcap dissection {args.action}")
    producer = await _publisher(cfg)
    try:
        await producer.send_and_wait(topics.CONTROL, sw.encode(), key=DISSECTION_KEY.encode())
    except _kafka_errors() as exc:
        raise TransportError(f"cannot write {topics.CONTROL}: {exc!r}") from None
    finally:
        await producer.stop()
    if args.json:
        print(json.dumps({"enabled": sw.enabled, "stop_after_s": sw.stop_after_s}))
    else:
        print(f"real-time dissection {'started' if sw.enabled else 'stopped'}")
    return 0


def _lag_metrics(cfg: Config) -> tuple[Any, Any]:
    """The group's lag gauges (rawcap/kafka/_lag.py), on /metrics when ``metrics.port`` is set."""
    from prometheus_client import CollectorRegistry

    from rawcap.kafka import GroupLag, serve_metrics

    registry = CollectorRegistry()
    lag = GroupLag(GROUP_ID, registry)
    port = cfg.get("metrics.port")
    return lag, serve_metrics(registry, port) if port else None


async def _follow(args: argparse.Namespace, cfg: Config) -> int:
    """Live dissection in consumer group ``rawcap-dissector`` while the switch is on."""
    from aiokafka import TopicPartition

    from rawcap.kafka import make_consumer

    sw = await read_switch(cfg)
    enabled = sw.enabled if sw else not cfg.get("tap.capture.stopped")
    stop_after = sw.stop_after_s if sw else cfg.get("tap.capture.stopAfter")
    if not enabled:
        log.warning("real-time dissection is stopped (rawcap dissection start to enable)")
    from rawcap.workloads import Workloads

    # live: rawcap.k8s is followed in the task group below (names of pods started later)
    workloads = None if getattr(args, "k8s", None) is False else Workloads()
    k8s_ready = anyio.Event()
    out = _output(args, cfg, workloads)
    nodes = _Nodes(cfg, out, not args.no_redact)
    producer = None if args.no_publish else await _publisher(cfg)
    pub = None if producer is None else _Publisher(producer)

    async def publish() -> None:
        out.flush()
        if pub is not None:
            for flushed in out.take():
                await pub.publish(flushed)
            await pub.wait()
        out.sync()  # stored too, before the offsets are committed

    consumer = make_consumer(cfg, topics.PACKETS, group_id=GROUP_ID)
    control = make_consumer(cfg)
    lag, server = _lag_metrics(cfg)
    state = {"enabled": enabled, "stop_after": stop_after, "last_packet": time.monotonic(),
             "dlq": 0}
    try:
        with anyio.fail_after(60):
            await consumer.start()
            await control.start()
        ctps = [TopicPartition(topics.CONTROL, p)
                for p in sorted(await _partitions(control, topics.CONTROL))]
        if ctps:
            control.assign(ctps)
            await control.seek_to_end(*ctps)
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        log.info("signal: final flush, then exit")
                        tg.cancel_scope.cancel()
                        return

            async def watch_control() -> None:
                while ctps:
                    got = await control.getmany(timeout_ms=500, max_records=100)
                    for recs in got.values():
                        for r in recs:
                            if r.key != DISSECTION_KEY.encode() or r.value is None:
                                continue
                            try:
                                new = decode_control(r.value)
                            except (ValueError, KeyError, TypeError):
                                continue
                            if isinstance(new, DissectionSwitch):
                                state["enabled"] = new.enabled
                                state["stop_after"] = new.stop_after_s
                                state["last_packet"] = time.monotonic()
                                log.info("dissection switch", extra={"enabled": new.enabled})
                                if not new.enabled:
                                    tg.cancel_scope.cancel()
                                    return
                await anyio.sleep_forever()

            async def dissect_loop() -> None:
                if workloads is not None:
                    with anyio.move_on_after(READY_WAIT_S):
                        await k8s_ready.wait()
                    if not k8s_ready.is_set():
                        log.warning(f"{topics.K8S} not read to its end after "
                                    f"{READY_WAIT_S:g}s: dissecting; early calls may lack "
                                    "workload names")
                    state["last_packet"] = time.monotonic()  # stopAfter counts from here
                while True:
                    if not state["enabled"]:
                        await anyio.sleep(0.5)
                        continue
                    got = await consumer.getmany(timeout_ms=500, max_records=FETCH_RECORDS)
                    n = 0
                    for tp_recs in got.values():
                        for r in tp_recs:
                            try:
                                batch = decode_batch(r.value)
                            except BatchError as exc:
                                state["dlq"] += 1
                                if producer is not None:
                                    await producer.send_and_wait(
                                        topics.DLQ, bytes(r.value or b""), key=r.key,
                                        headers=[("error", str(exc).encode()),
                                                 ("consumer", GROUP_ID.encode())])
                                continue
                            d = nodes.get(batch.header.node)
                            for p in batch.packets:
                                d.packet(p.ts_ns, p.data)
                            n += len(batch.packets)
                    if n:
                        state["last_packet"] = time.monotonic()
                    await publish()
                    if got:
                        await consumer.commit()  # only after calls are stored and produced
                    idle = time.monotonic() - state["last_packet"]
                    if state["stop_after"] and idle > state["stop_after"]:
                        log.info("no packets for stopAfter: stopping",
                                 extra={"idle_s": round(idle, 1)})
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch_signals)
            tg.start_soon(watch_control)
            tg.start_soon(lag.run, consumer)
            if workloads is not None:
                tg.start_soon(follow_workloads, workloads, cfg, k8s_ready)
            tg.start_soon(dissect_loop)
    except _kafka_errors() as exc:
        raise TransportError(f"Kafka: {exc!r}") from None
    finally:
        with anyio.move_on_after(15, shield=True):
            # Final flush: calls of an interrupted fetch are stored and produced; its offsets
            # were not committed, so a restart dissects it again (the store ignores repeats).
            await publish()
        with anyio.CancelScope(shield=True):
            await control.stop()
            await consumer.stop()
            if producer is not None:
                await producer.stop()
            out.close()
            if server is not None:
                server[0].shutdown()
                server[0].server_close()
    if args.stats:
        print(json.dumps({"dissector": nodes.stats(), "dlq": state["dlq"]}), file=sys.stderr)
    return 0
