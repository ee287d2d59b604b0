"""Tails the node FIFO into ``rawcap.packets``: in order, once, resuming after outages.

The shipper never holds the only copy of a batch: it reads from the FIFO (which keeps a
batch in memory until it is acknowledged, or on disk once it is older), sends with an
idempotent ``acks=all`` producer (which retries through a broker outage without expiring
batches and without duplicating them), and moves ``acked_seq`` forward only in sequence
order as acknowledgements arrive. Should the producer itself fail, it is closed and a new
one resumes at ``acked_seq + 1``. In-flight work is bounded by ``IN_FLIGHT`` batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from rawcap.config import Config
from rawcap.kafka import (
    OneRecordBatch,
    consumer_kwargs,
    ensure_topics,
    install_produce_request,
    producer_kwargs,
)
from schemas import decode_header
from schemas.errors import BatchError, TransportError
from schemas.topics import PACKETS

from ._fifo import Fifo
from ._metrics import Metrics

__all__ = ("IN_FLIGHT", "Shipper", "producer_config")

log = logging.getLogger("rawcap.capture")

IN_FLIGHT = 8
#: Records read back from our partition's tail when (re)connecting (see _skip_already_in_kafka).
_TAIL = 64
_BACKOFF_MAX = 5.0
#: An idle shipper sleeps this long between checks. Every append wakes it at once (the
#: agent forwards the FIFO's callback), so this is a safety net, not a latency: at 0.5 s
#: its wake-ups were a visible part of an idle agent's CPU.
_IDLE_WAIT = 5.0


def producer_config(cfg: Config) -> dict[str, Any]:
    """Shared producer settings (TLS/SASL) from ``rawcap.kafka`` plus what shipping needs."""
    return producer_kwargs(
        cfg,
        acks="all",
        enable_idempotence=True,
        max_batch_size=1024 * 1024,
        linger_ms=0,
        compression_type=None,  # batch bodies are zstd already
    )


class Shipper:
    """One node's FIFO -> Kafka. ``run()`` until cancelled; ``drain()`` for shutdown."""

    def __init__(self, cfg: Config, fifo: Fifo, metrics: Metrics) -> None:
        self.cfg, self.fifo, self.metrics = cfg, fifo, metrics
        self.key = fifo.node.encode()
        self._new_data = anyio.Event()
        self.connected = False
        self.shipped_batches = 0
        self._topics_ok = False
        # One prebuilt record per batch (rawcap/kafka/_produce.py), unless aiokafka changed shape.
        self._fast = install_produce_request()

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
            producer = AIOKafkaProducer(**producer_config(self.cfg))
            try:
                if not self._topics_ok:
                    await ensure_topics(self.cfg, 10.0)
                    self._topics_ok = True
                await producer.start()
                await self._skip_already_in_kafka()
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
            md = await consumer._client.fetch_all_metadata()
            parts = sorted(md.partitions_for_topic(PACKETS) or ())
            if not parts:
                return 0
            tp = TopicPartition(PACKETS, DefaultPartitioner()(self.key, parts, parts))
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

    async def _ship(self, producer: AIOKafkaProducer, until_caught_up: bool) -> None:
        # send_batch needs the partition that send() would pick for our key.
        partitions = sorted(await producer.partitions_for(PACKETS))
        partition = DefaultPartitioner()(self.key, partitions, partitions)
        window = _InFlight(self)
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
                got = self.fifo.read(nxt)
                if got is None:
                    nxt += 1  # recycled between the checks above
                    continue
                entry, parts = got
                ts_ms = entry.first_ns // 1_000_000
                if self._fast:
                    fut = await producer.send_batch(OneRecordBatch(self.key, list(parts), ts_ms),
                                                    PACKETS, partition=partition)
                else:
                    fut = await producer.send(PACKETS, value=b"".join(parts), key=self.key,
                                              timestamp_ms=ts_ms)
                window.add(entry.seq, fut)
                nxt += 1
            while window.pending:
                window.raise_failure()
                await self._wait_new_data(_IDLE_WAIT)
        finally:
            window.close()

    def _acked(self, seq: int) -> None:
        self.fifo.mark_acked(seq)
        self.shipped_batches += 1
        self.metrics.batches_shipped.inc()

    def lag_seconds(self) -> float:
        """Age of the oldest batch not yet acknowledged (0 when caught up)."""
        found = self.fifo.locate(self.fifo.acked_seq + 1)
        if found is None:
            return 0.0
        return max(0.0, time.time() - found[1].first_ns / 1e9)


class _InFlight:
    """The batches sent and not yet acknowledged, oldest first (at most ``IN_FLIGHT``).

    Acknowledgements are taken in done-callbacks on the event loop, not by an acker task
    reading a queue: per batch that saves the queue's checkpoints and a task wake-up, a
    tenth of the shipper's event-loop work. ``acked_seq`` moves only across a run of
    successful futures from the oldest; a failed one stays at the head for the send loop
    to raise (``run()`` then resumes with a new producer at ``acked_seq + 1``). The shipper
    is woken when room frees up or a send failed; after ``close()`` late callbacks (from a
    producer being stopped) change nothing."""

    def __init__(self, shipper: Shipper) -> None:
        self._shipper = shipper
        self._futs: deque[tuple[int, asyncio.Future[Any]]] = deque()
        self._open = True

    @property
    def full(self) -> bool:
        return len(self._futs) >= IN_FLIGHT

    @property
    def pending(self) -> bool:
        return bool(self._futs)

    def add(self, seq: int, fut: asyncio.Future[Any]) -> None:
        self._futs.append((seq, fut))
        fut.add_done_callback(self._done)

    def _done(self, _fut: asyncio.Future[Any]) -> None:
        futs, shipper = self._futs, self._shipper
        if not self._open:
            return
        was_full = len(futs) >= IN_FLIGHT
        while futs and futs[0][1].done():
            seq, fut = futs[0]
            if fut.cancelled() or fut.exception() is not None:
                shipper.notify()
                return
            futs.popleft()
            shipper._acked(seq)
        if was_full or not futs:
            shipper.notify()

    def raise_failure(self) -> None:
        """Raise the oldest send's error, if it failed (``KafkaError`` if the producer
        gave up)."""
        if self._futs and self._futs[0][1].done():
            fut = self._futs[0][1]
            if fut.cancelled():  # not our cancellation: a producer torn down under us
                raise KafkaError("the producer cancelled a send")
            fut.result()

    def close(self) -> None:
        self._open = False
        self._futs.clear()
