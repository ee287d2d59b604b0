"""The one interface a reader of one partition drives, and its stock-aiokafka implementation.

A :class:`Fetcher` reads one partition forward from an offset: :meth:`~Fetcher.start` sends
the first fetch, :meth:`~Fetcher.next` returns the records of the fetch in flight and the
offset to read next (and sends the next fetch before it returns, when the implementation
can read ahead), :meth:`~Fetcher.cancel` drops what is in flight. The project's own
plaintext client (``_wire.WireFetcher``) implements it; :class:`ConsumerFetcher` implements
it over stock aiokafka's consumer, for everything that client leaves to aiokafka (TLS, SASL,
following a topic, Kafka-compressed batches, an error code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ("ConsumerFetcher", "Fetcher", "KafkaRecord")


class KafkaRecord(Protocol):
    """What a fetcher hands out per record (``FetchedRecord``, aiokafka's ``ConsumerRecord``)."""

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...  # ms

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | memoryview | None: ...


class Fetcher(Protocol):
    """One partition, read forward (what ``rawcap.window``'s Kafka lane drives)."""

    def start(self, offset: int) -> None:
        """Send the fetch for ``offset`` (the first one; :meth:`next` sends the others)."""

    async def next(self, stop: int) -> tuple[Sequence[KafkaRecord], int]:
        """The records of the fetch in flight and the next offset; fetches on from there
        unless it reached ``stop``. Raises ``Unsupported`` for what another fetcher must do
        (then nothing is in flight)."""
        ...

    def cancel(self) -> None:
        """Drop the fetch in flight (the reader is done or closing)."""


class ConsumerFetcher:
    """One partition through stock aiokafka's consumer: its owner has assigned the partition
    (and paused it until a fetcher starts); :meth:`start` seeks and resumes it, and aiokafka's
    own fetcher reads ahead from there. :meth:`next` waits at most ``wait_ms`` for records."""

    def __init__(self, consumer: Any, tp: Any, *, wait_ms: int = 500, max_records: int = 100_000) -> None:
        self._consumer, self._tp = consumer, tp
        self._wait_ms, self._max = wait_ms, max_records
        self._pos = 0

    def start(self, offset: int) -> None:
        self._pos = offset
        self._consumer.seek(self._tp, offset)
        self._consumer.resume(self._tp)

    async def next(self, stop: int) -> tuple[Sequence[KafkaRecord], int]:
        got = await self._consumer.getmany(self._tp, timeout_ms=self._wait_ms, max_records=self._max)
        recs: list[Any] = got.get(self._tp, [])
        if recs:
            self._pos = recs[-1].offset + 1
        return recs, self._pos

    def cancel(self) -> None:
        self._consumer.pause(self._tp)
