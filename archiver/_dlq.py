"""Corrupt records to ``rawcap.dlq``: best effort, with the error and where it came from."""

from __future__ import annotations

import logging
from typing import Any

import anyio

from rawcap import kafka
from rawcap.config import Config
from schemas import topics

__all__ = ("DeadLetters",)

log = logging.getLogger("rawcap.archive")


class DeadLetters:
    """A producer of ``rawcap.dlq`` started on the first corrupt record; :meth:`aclose` stops it."""

    def __init__(self, cfg: Config, source_topic: str) -> None:
        self.cfg, self.source_topic = cfg, source_topic
        self._producer: Any = None

    async def send(self, value: Any, key: bytes | None, exc: Exception, partition: int, offset: int) -> None:
        """Never raises: the record is counted and logged by the caller either way."""
        try:
            if self._producer is None:
                self._producer = kafka.make_producer(self.cfg)
                with anyio.fail_after(15):
                    await self._producer.start()
            headers = [
                ("error", str(exc).encode()),
                ("source.topic", self.source_topic.encode()),
                ("source.partition", str(partition).encode()),
                ("source.offset", str(offset).encode()),
                ("reporter", b"archiver"),
            ]
            with anyio.fail_after(15):
                await self._producer.send_and_wait(topics.DLQ, bytes(value), key=key, headers=headers)
        except Exception as dexc:  # best effort
            log.warning("could not send corrupt batch to %s: %r", topics.DLQ, dexc)

    async def aclose(self) -> None:
        if self._producer is not None:
            with anyio.move_on_after(10):
                await self._producer.stop()
