"""Corrupt records to ``rawcap.dlq``, with the error and where they came from (headers)."""

from __future__ import annotations

from typing import Any

import anyio

from schemas import topics

from ..config import Config
from ._clients import make_producer

__all__ = ("DeadLetters",)


class DeadLetters:
    """A ``rawcap.dlq`` producer for one consumer, started on the first corrupt record (most
    runs never need it); :meth:`aclose` stops it. Headers: ``error``, ``source.topic``,
    ``source.partition``, ``source.offset`` and ``reporter`` (the service's name)."""

    def __init__(self, cfg: Config, source_topic: str, reporter: str) -> None:
        self.cfg, self.source_topic, self.reporter = cfg, source_topic, reporter.encode()
        self._producer: Any = None

    async def send(self, value: Any, key: bytes | None, exc: Exception, partition: int, offset: int) -> None:
        """Write one record and wait for Kafka to have it; raises what the producer raises
        (or TimeoutError after 15 s): the caller decides whether that is fatal."""
        if self._producer is None:
            producer = make_producer(self.cfg)
            with anyio.fail_after(15):
                await producer.start()
            self._producer = producer
        headers = [
            ("error", str(exc).encode()),
            ("source.topic", self.source_topic.encode()),
            ("source.partition", str(partition).encode()),
            ("source.offset", str(offset).encode()),
            ("reporter", self.reporter),
        ]
        with anyio.fail_after(15):
            await self._producer.send_and_wait(topics.DLQ, bytes(value), key=key, headers=headers)

    async def aclose(self) -> None:
        if self._producer is not None:
            with anyio.move_on_after(10):
                await self._producer.stop()
