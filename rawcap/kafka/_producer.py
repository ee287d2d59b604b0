"""The one produce path for ``rawcap.packets`` batches (the capture shipper's), and for many
small keyed records (``rawcap enrich``'s ``rawcap.flows``: :meth:`BatchProducer.send_values`).

Idempotent, ``acks=all``, no Kafka compression (batch bodies are zstd already). Values are
laid out once into rawcap's own v2 record batches (``_compat.RecordsBatch``: values by
reference, a hardware crc32c over the pieces, the request joined once or laid out in the
value's own buffer), and aiokafka's producer does the rest (idempotent sequence numbers,
retries, acks, metadata, errors). Several consecutive values go into one record batch, up to
``REQUEST_BYTES``: aiokafka keeps one request per partition on the wire, so one small value
per request made the per-request cost the shipper's largest at 256 KiB values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from ..config import Config
from ._clients import producer_kwargs
from ._codec import crc32c, murmur2
from ._compat import RecordsBatch, ValuesBatch, install_produce_request

__all__ = ("BatchProducer",)


class BatchProducer:
    """``start()``/``stop()``; :meth:`send` one record batch of consecutive values of one key.

    The caller keeps at most :attr:`in_flight` sends unacknowledged (one on the wire, the
    next waiting in aiokafka's accumulator) and puts into each send what has accumulated
    meanwhile, :meth:`records_for` deciding how much."""

    #: Values go into one record batch up to this many bytes (one larger value goes alone).
    REQUEST_BYTES = 1024 * 1024
    #: ... and up to this many values.
    RECORDS_PER_REQUEST = 8
    #: Sends a caller keeps unacknowledged.
    IN_FLIGHT = 2
    #: :meth:`send_values` puts consecutive values of one key into one record batch up to
    #: this many bytes of values (well below the brokers' default ``message.max.bytes``).
    VALUES_BYTES = 256 * 1024

    def __init__(self, cfg: Config, **extra: Any) -> None:
        from aiokafka import AIOKafkaProducer

        install_produce_request()
        crc32c(b"")  # its module loads now (tens of ms of imports), not in the first send
        kw = producer_kwargs(cfg, acks="all", enable_idempotence=True, max_batch_size=self.REQUEST_BYTES,
                             linger_ms=0, compression_type=None)
        kw.update(extra)
        self._producer = AIOKafkaProducer(**kw)
        self.in_flight = self.IN_FLIGHT
        self._partitions: dict[tuple[bytes, tuple[int, ...]], int] = {}

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def partition_of(self, topic: str, key: bytes) -> int:
        """The partition the default partitioner (murmur2 of the key) gives ``key``."""
        from aiokafka.partitioner import DefaultPartitioner

        partitions = sorted(await self._producer.partitions_for(topic))
        return int(DefaultPartitioner()(key, partitions, partitions))

    def leader_of(self, topic: str, partition: int) -> int | None:
        """The broker id leading ``topic``/``partition`` in the producer's current metadata
        (``None`` or -1 while it has none: during a failover)."""
        from aiokafka import TopicPartition

        leader = self._producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        return None if leader is None else int(leader)

    @classmethod
    def records_for(cls, sizes: Iterable[int]) -> int:
        """How many of the next values (their sizes, in order) go into one record batch."""
        n = total = 0
        for size in sizes:
            if n and (total + size > cls.REQUEST_BYTES or n >= cls.RECORDS_PER_REQUEST):
                break
            n += 1
            total += size
        return max(n, 1)

    async def send(self, topic: str, partition: int, key: bytes,
                   records: Sequence[tuple[Sequence[Any], int]]) -> asyncio.Future[Any]:
        """Queue one record batch: ``records`` are ``(value pieces, timestamp ms)``; the
        future resolves once Kafka acknowledged all of them (or fails for all of them)."""
        fut: asyncio.Future[Any] = await self._producer.send_batch(
            RecordsBatch(key, records), topic, partition=partition)
        return fut

    async def send_values(self, topic: str, records: Sequence[tuple[bytes, bytes, int]]
                          ) -> list[asyncio.Future[Any]]:
        """Queue ``(key, value, timestamp ms)`` records, in order, each on the partition
        aiokafka's ``send`` gives its key (the default partitioner: murmur2 of the key, here
        computed once per key and partition list), consecutive ones of one key in one record
        batch up to :attr:`VALUES_BYTES`: the records a consumer reads (key, value,
        timestamp, partition, order) are those of one ``send`` per record. The futures
        resolve once Kafka acknowledged their records (or fail for them)."""
        parts = tuple(sorted(await self._producer.partitions_for(topic)))
        futures: list[asyncio.Future[Any]] = []
        i, n = 0, len(records)
        while i < n:
            key = records[i][0]
            partition = self._partitions.get((key, parts))
            if partition is None:
                if len(self._partitions) > 10_000:
                    self._partitions.clear()
                partition = self._partitions[key, parts] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
            values: list[bytes] = []
            stamps: list[int] = []
            size = 0
            while i < n and records[i][0] == key:
                _key, value, ts = records[i]
                if values and size + len(value) > self.VALUES_BYTES:
                    break
                values.append(value)
                stamps.append(ts)
                size += len(value)
                i += 1
            futures.append(await self._producer.send_batch(ValuesBatch(key, values, stamps), topic,
                                                           partition=partition))
        return futures
