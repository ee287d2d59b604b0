"""Tails the node FIFO into ``rawcap.packets``: in order, once, resuming after outages.

The shipper never holds the only copy of a batch: it reads from the FIFO (which keeps a
batch in memory until it is acknowledged, or on disk once it is older), sends with the
idempotent ``acks=all`` producer of ``rawcap.kafka`` (which retries through a broker outage
without expiring batches and without duplicating them), and moves ``acked_seq`` forward only
in sequence order as acknowledgements arrive. Should the producer itself fail, it is closed
and a new one resumes at ``acked_seq + 1``. Each send carries the FIFO batches that are
waiting, up to ``BatchProducer``'s request size (one record each); at most
``BatchProducer.IN_FLIGHT`` sends, ``IN_FLIGHT`` batches, are unacknowledged at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from rawcap.config import Config
from rawcap.kafka import BatchProducer, consumer_kwargs, ensure_topics, node_partition, topic_partitions
from rawcap.malloc import trim as malloc_trim
from schemas import decode_header
from schemas.errors import BatchError, TransportError
from schemas.topics import PACKETS

from ._fifo import Fifo
from ._metrics import Metrics

__all__ = ("IN_FLIGHT", "Shipper")

log = logging.getLogger("rawcap.capture")

#: FIFO batches (Kafka records) unacknowledged at most: a resend check after a crash must
#: find them all in the partition's tail (``_TAIL``).
IN_FLIGHT = BatchProducer.IN_FLIGHT * BatchProducer.RECORDS_PER_REQUEST
#: Records read back from our partition's tail when (re)connecting (see _skip_already_in_kafka).
_TAIL = 64
_BACKOFF_MAX = 5.0
#: An idle shipper sleeps this long between checks. Every append wakes it at once (the
#: agent forwards the FIFO's callback), so this is a safety net, not a latency: at 0.5 s
#: its wake-ups were a visible part of an idle agent's CPU.
_IDLE_WAIT = 5.0


class Shipper:
    """One node's FIFO -> Kafka. ``run()`` until cancelled; ``drain()`` for shutdown."""

    def __init__(self, cfg: Config, fifo: Fifo, metrics: Metrics) -> None:
        self.cfg, self.fifo, self.metrics = cfg, fifo, metrics
        self.key = fifo.node.encode()
        self._new_data = anyio.Event()
        self.connected = False
        self.shipped_batches = 0
        self._topics_ok = False
        self._producer: BatchProducer | None = None  # the one shipping, for its partition's leader
        self._partition = -1
        self.leader = -1

    def notify(self) -> None:
        """Wake the shipper: on the event loop thread (the agent forwards the FIFO's
        per-append callback from the ring thread with ``call_soon_threadsafe``)."""
        self._new_data.set()

    async def _wait_new_data(self, wait: float) -> None:
        with anyio.move_on_after(wait):
            await self._new_data.wait()
        self._new_data = anyio.Event()

    async def run(self, *, until_caught_up: bool = False) -> None:
        """Ship forever (or, with ``until_caught_up``, until nothing is left to ship)."""
        backoff = 0.5
        while True:
            if until_caught_up and self.fifo.acked_seq >= self.fifo.last_seq:
                return
            producer = BatchProducer(self.cfg)
            try:
                if not self._topics_ok:
                    await ensure_topics(self.cfg, 10.0)
                    self._topics_ok = True
                await producer.start()
                await self._skip_already_in_kafka()
                # What a failed send carried and Kafka does not hold: lost if recycled meanwhile.
                self.fifo.abandon_in_flight()
                malloc_trim()  # the tail read's fetch buffers (up to 64 large records) are garbage now
                self.connected = True
                backoff = 0.5
                log.info("shipper connected", extra={"resume_seq": self.fifo.acked_seq + 1})
                self.fifo.holding = True  # memory first while Kafka acknowledges (capture/_fifo.py)
                await self._ship(producer, until_caught_up)
                return
            except (KafkaError, OSError, TransportError) as exc:
                self.metrics.ship_errors.inc()
                log.warning("shipper: %s; resuming at batch %d in %.1fs",
                            exc or type(exc).__name__, self.fifo.acked_seq + 1, backoff)
            except Exception:
                # Capture must outlive a shipper bug: the FIFO still holds everything.
                self.metrics.ship_errors.inc()
                log.exception("shipper failed; resuming at batch %d in %.1fs",
                              self.fifo.acked_seq + 1, backoff)
            finally:
                self.connected = False
                self.fifo.holding = False
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await producer.stop()
            await anyio.sleep(backoff)
            backoff = min(_BACKOFF_MAX, backoff * 2)

    async def _skip_already_in_kafka(self) -> None:
        """Move ``acked_seq`` past batches of ours that Kafka already holds.

        A crash between Kafka's acknowledgement and ``shipped.json``, or a producer that
        failed with batches in flight, would otherwise resend them under a new producer id
        (which the broker cannot deduplicate). Only the tail of our partition can hold such
        batches: read the last ``_TAIL`` records there and take our highest sequence.
        """
        high = await self._kafka_high_seq()
        if high > self.fifo.acked_seq and high <= self.fifo.last_seq:
            log.info("batches already in Kafka, not resending",
                     extra={"from_seq": self.fifo.acked_seq + 1, "to_seq": high})
            self.fifo.mark_acked(high)

    async def _kafka_high_seq(self) -> int:
        consumer = AIOKafkaConsumer(**consumer_kwargs(self.cfg, None, enable_auto_commit=False))
        try:
            await consumer.start()
            parts = await topic_partitions(consumer, PACKETS)
            if not parts:
                return 0
            tp = TopicPartition(PACKETS, node_partition(self.fifo.node, len(parts)))
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            start = max(0, end - _TAIL)
            consumer.seek(tp, start)
            high = 0
            while await consumer.position(tp) < end:
                got = await consumer.getmany(tp, timeout_ms=2000, max_records=_TAIL)
                if not got:
                    break
                for rec in got.get(tp, []):
                    if rec.key == self.key and rec.value:
                        try:
                            header, _ = decode_header(rec.value)
                        except BatchError:
                            continue
                        high = max(high, header.seq)
            return high
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await consumer.stop()

    async def _ship(self, producer: BatchProducer, until_caught_up: bool) -> None:
        partition = await producer.partition_of(PACKETS, self.key)
        self._producer, self._partition = producer, partition
        self._watch_leader()
        window = _InFlight(self, producer.in_flight)
        try:
            nxt = self.fifo.acked_seq + 1
            while True:
                window.raise_failure()
                if window.full:
                    await self._wait_new_data(_IDLE_WAIT)
                    continue
                if nxt > self.fifo.last_seq:
                    if until_caught_up:
                        break
                    await self._wait_new_data(_IDLE_WAIT)
                    continue
                if nxt < self.fifo.first_seq:
                    # Recycled before we got to it: the FIFO already counted it lost.
                    nxt = self.fifo.first_seq
                    continue
                records, first = self._take(nxt)
                if not records:
                    nxt += 1  # recycled between the checks above
                    continue
                nxt = first + len(records)
                fut = await producer.send(PACKETS, partition, self.key, records)
                window.add(nxt - 1, fut, len(records))
            while window.pending:
                window.raise_failure()
                await self._wait_new_data(_IDLE_WAIT)
        finally:
            window.close()

    def _take(self, seq: int) -> tuple[list[tuple[tuple[Any, ...], int]], int]:
        """The batches from ``seq`` on that one send carries (``(pieces, timestamp ms)``, in
        sequence order, with no gap) and the sequence number of the first."""
        records: list[tuple[tuple[Any, ...], int]] = []
        sizes: list[int] = []
        with self.fifo.lock:  # no recycling between the reads and in_flight_to
            while seq <= self.fifo.last_seq and len(records) < BatchProducer.RECORDS_PER_REQUEST:
                got = self.fifo.read(seq)
                if got is None:
                    break
                entry, parts = got
                if BatchProducer.records_for([*sizes, entry.length]) <= len(records):
                    break
                records.append((parts, entry.first_ns // 1_000_000))
                sizes.append(entry.length)
                seq += 1
            if records:
                self.fifo.in_flight_to = max(self.fifo.in_flight_to, seq - 1)
        return records, seq - len(records)

    def _acked(self, seq: int, count: int = 1) -> None:
        self.fifo.mark_acked(seq)
        self.shipped_batches += count
        self.metrics.batches_shipped.inc(count)
        self._watch_leader()

    def _watch_leader(self) -> None:
        """Follow the leader of our partition (metrics: a failover shows as a change)."""
        if self._producer is None:
            return
        leader = self._producer.leader_of(PACKETS, self._partition)
        if leader is None or leader < 0 or leader == self.leader:
            return
        if self.leader >= 0:
            self.metrics.ship_leader_changes.inc()
            log.info("partition leader moved", extra={"from_broker": self.leader, "to_broker": leader})
        self.leader = leader
        self.metrics.ship_leader.set(leader)

    def lag_seconds(self) -> float:
        """Age of the oldest batch not yet acknowledged (0 when caught up)."""
        found = self.fifo.locate(self.fifo.acked_seq + 1)
        if found is None:
            return 0.0
        return max(0.0, time.time() - found[1].first_ns / 1e9)


class _InFlight:
    """The sends not yet acknowledged, oldest first (at most ``limit``), each with the
    sequence number of its last batch and how many batches it carries.

    Acknowledgements are taken in done-callbacks on the event loop, not by an acker task
    reading a queue: per send that saves the queue's checkpoints and a task wake-up.
    ``acked_seq`` moves only across a run of successful futures from the oldest; a failed
    one stays at the head for the send loop to raise (``run()`` then resumes with a new
    producer at ``acked_seq + 1``). The shipper is woken when room frees up or a send failed;
    after ``close()`` late callbacks (from a producer being stopped) change nothing."""

    def __init__(self, shipper: Shipper, limit: int = BatchProducer.IN_FLIGHT) -> None:
        self._shipper = shipper
        self._limit = limit
        self._futs: deque[tuple[int, int, asyncio.Future[Any]]] = deque()
        self._open = True

    @property
    def full(self) -> bool:
        return len(self._futs) >= self._limit

    @property
    def pending(self) -> bool:
        return bool(self._futs)

    def add(self, seq: int, fut: asyncio.Future[Any], count: int = 1) -> None:
        self._futs.append((seq, count, fut))
        fut.add_done_callback(self._done)

    def _done(self, _fut: asyncio.Future[Any]) -> None:
        futs, shipper = self._futs, self._shipper
        if not self._open:
            return
        was_full = len(futs) >= self._limit
        while futs and futs[0][2].done():
            seq, count, fut = futs[0]
            if fut.cancelled() or fut.exception() is not None:
                shipper.notify()
                return
            futs.popleft()
            shipper._acked(seq, count)
        if was_full or not futs:
            shipper.notify()

    def raise_failure(self) -> None:
        """Raise the oldest send's error, if it failed (``KafkaError`` if the producer
        gave up)."""
        if self._futs and self._futs[0][2].done():
            fut = self._futs[0][2]
            if fut.cancelled():  # not our cancellation: a producer torn down under us
                raise KafkaError("the producer cancelled a send")
            fut.result()

    def close(self) -> None:
        self._open = False
        self._futs.clear()
