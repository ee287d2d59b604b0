"""Every use rawcap makes of aiokafka's internals, in one place, each one checked.

aiokafka's public API cannot (1) take a record batch built elsewhere into its producer's
accumulator: ``send_batch`` is public, but the batch object it takes is aiokafka's own
``BatchBuilder``, whose surface :class:`RecordsBatch` duck-types (:class:`ValuesBatch`: its
layout for many small values); (2) encode a produce
request without copying every value several times: :class:`ProduceRequest` is aiokafka's own
class with an encoder that returns the pieces of ``_codec.produce_request``, joined once by
:class:`_Pieces` as aiokafka's connection prepends the header and size (or laid out in the
value's own buffer, ``_codec.in_place``), and :func:`install_produce_request` puts it into
aiokafka's sender; (3) tell a group-less consumer to learn a topic's partitions
(:func:`consumer_partitions`); (4) count the brokers an admin client knows
(:func:`admin_broker_count`: topic replication follows it) and send an admin request it has
no method for (:func:`admin_send`: the local stack's CreateAcls). (1) and (2) are the
shipper's produce path: less than half the CPU of aiokafka's generic one (``bench/kafka``,
``docs/kafka.md``).

:func:`problems` says what of this does not look as expected in the installed aiokafka. The
canaries (``tests/rawcap/kafka/test_compat.py``) fail when it finds anything, or when bytes
on the wire differ from aiokafka's own encoding; at run time the shipper refuses to start
with one line naming the aiokafka version, rather than run a slower path unnoticed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
from aiokafka.protocol import produce as _produce_mod

from ._codec import in_place, record_batch, value_batch
from ._codec import produce_request as _encode_produce

__all__ = (
    "ProduceRequest",
    "RecordsBatch",
    "ValuesBatch",
    "admin_broker_count",
    "admin_send",
    "consumer_partitions",
    "install_produce_request",
    "problems",
)

log = logging.getLogger("rawcap.kafka")

class RecordsBatch:
    """A v2 record batch of one key's values (``_codec.record_batch``), duck-typing the
    ``BatchBuilder`` that aiokafka's accumulator and sender drive: closed from the start,
    stamped with the idempotent producer's state, laid out once (a retry resends the very
    same bytes)."""

    def __init__(self, key: bytes, records: Sequence[tuple[Sequence[Any], int]]) -> None:
        self.key = key
        self.records = list(records)
        self.value_len = sum(len(p) for pieces, _ts in self.records for p in pieces)
        self._producer = (-1, -1, -1)
        self.chunks: list[Any] | None = None
        self.total = 0

    # --- the BatchBuilder surface aiokafka uses -----------------------------------------
    def close(self) -> None:
        pass  # nothing can be appended anyway

    def closed(self) -> bool:
        return True

    def record_count(self) -> int:
        return len(self.records)

    def size(self) -> int:
        return 61 + len(self.records) * (32 + len(self.key)) + self.value_len

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self._producer = (producer_id, producer_epoch, base_sequence)

    def _build(self) -> RecordsBatch:
        if self.chunks is None:
            self.chunks, self.total = record_batch(self.key, self.records, self._producer)
        return self

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, key: slice) -> bytes:
        return self.to_bytes()[key]  # aiokafka's debug logging shows value[:100]

    def to_bytes(self) -> bytes:
        """The batch as one ``bytes`` (aiokafka's generic request path, tests)."""
        self._build()
        assert self.chunks is not None
        return b"".join(self.chunks)


class ValuesBatch(RecordsBatch):
    """A :class:`RecordsBatch` of one-piece values, ``values[i]`` at ``timestamps[i]`` ms, laid
    out as one piece (``_codec.value_batch``: the same bytes): many small records."""

    def __init__(self, key: bytes, values: Sequence[bytes], timestamps: Sequence[int]) -> None:
        super().__init__(key, ())
        self.values = values
        self.timestamps = timestamps
        self.value_len = sum(map(len, values))

    def record_count(self) -> int:
        return len(self.values)

    def size(self) -> int:
        return 61 + len(self.values) * (32 + len(self.key)) + self.value_len

    def _build(self) -> RecordsBatch:
        if self.chunks is None:
            self.chunks, self.total = value_batch(self.key, self.values, self.timestamps, self._producer)
        return self


class ProduceRequest(_produce_mod.ProduceRequest):
    """aiokafka's ``ProduceRequest``: v3+ carrying only :class:`RecordsBatch` values encodes
    in one join, anything else exactly as aiokafka does."""

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        st = super().prepare(versions)
        batches = [b for _, parts in self._topics for _, b in parts]
        if batches and all(isinstance(b, RecordsBatch) for b in batches):
            if st.API_VERSION >= 3:
                st.encode = self._encode_v3
            else:  # pragma: no cover - Kafka 4 brokers only speak v3+
                st.topics = [(t, [(p, b.to_bytes()) for p, b in parts]) for t, parts in self._topics]
        return st

    def _encode_v3(self) -> _Pieces:
        topics = [(topic, [(p, b._build().total, b.chunks) for p, b in parts])
                  for topic, parts in self._topics]
        return _Pieces(_encode_produce(self._transactional_id, self._required_acks, self._timeout, topics))


class _Pieces:
    """An encoded request body not joined yet. aiokafka's connection does
    ``message = header.encode() + body`` and then ``write(size + message)``: ``bytes + x``
    falls back to ``x.__radd__``, so the header is prepended here without a copy, and when
    the 4-byte size arrives last the whole request is joined in one copy (none when it can be
    laid out in place), which is what reaches the transport. Anything else added in front
    keeps the same exact bytes."""

    __slots__ = ("chunks", "headed", "length")

    def __init__(self, chunks: list[Any], headed: bool = False) -> None:
        self.chunks = chunks
        self.length = sum(len(c) for c in chunks)
        self.headed = headed

    def __len__(self) -> int:
        return self.length

    def __radd__(self, prefix: bytes) -> _Pieces | memoryview:
        if self.headed and len(prefix) == 4 and int.from_bytes(prefix, "big", signed=True) == self.length:
            # The size prefix: the request is complete. A memoryview, so that when the
            # socket takes only part of it the transport slices the rest without a copy.
            chunks = [prefix, *self.chunks]
            return in_place(chunks) or memoryview(b"".join(chunks))
        return _Pieces([prefix, *self.chunks], headed=True)

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks)


def problems() -> list[str]:
    """What of the internals used here does not look as this module expects (empty: all
    does). Each line names the piece of aiokafka."""
    out: list[str] = []
    try:
        from aiokafka.conn import AIOKafkaConnection
        from aiokafka.consumer.consumer import AIOKafkaConsumer
        from aiokafka.producer import message_accumulator, sender
        from aiokafka.producer.producer import AIOKafkaProducer
    except ImportError as exc:
        return [f"cannot import a module: {exc}"]

    def names(fn: Any) -> set[str]:
        return set(getattr(getattr(fn, "__code__", None), "co_names", ()))

    if sender.ProduceRequest not in (_produce_mod.ProduceRequest, ProduceRequest):
        out.append("aiokafka.producer.sender.ProduceRequest is not aiokafka.protocol.produce's")
    if not hasattr(sender.SendProduceReqHandler, "create_request") or \
            "ProduceRequest" not in names(sender.SendProduceReqHandler.create_request):
        out.append("SendProduceReqHandler.create_request does not build sender.ProduceRequest")
    batch = message_accumulator.MessageBatch
    if "_set_producer_state" not in names(getattr(batch, "set_producer_state", None)):
        out.append("MessageBatch.set_producer_state does not call builder._set_producer_state")
    if "_build" not in names(getattr(batch, "get_data_buffer", None)):
        out.append("MessageBatch.get_data_buffer does not call builder._build")
    if not callable(getattr(AIOKafkaProducer, "send_batch", None)):
        out.append("AIOKafkaProducer.send_batch is gone")
    if not {"encode", "write"} <= names(getattr(AIOKafkaConnection, "send", None)):
        out.append("AIOKafkaConnection.send does not encode the request and write it")
    versions = [c.API_VERSION for c in getattr(_produce_mod.ProduceRequest, "_CLASSES", ())]
    if not versions or not 3 <= max(versions) <= 8:
        out.append(f"ProduceRequest versions {versions}: the encoder speaks v3-v8")
    if "_client" not in names(AIOKafkaConsumer.partitions_for_topic):
        out.append("AIOKafkaConsumer has no _client")
    from aiokafka.client import AIOKafkaClient

    for name in ("_wait_on_metadata", "force_metadata_update"):
        if not callable(getattr(AIOKafkaClient, name, None)):
            out.append(f"AIOKafkaClient.{name} is gone")
    from aiokafka.cluster import ClusterMetadata

    if not isinstance(getattr(ClusterMetadata(), "unauthorized_topics", None), set):
        out.append("ClusterMetadata.unauthorized_topics is gone")
    if not callable(getattr(ClusterMetadata, "brokers", None)):
        out.append("ClusterMetadata.brokers is gone")
    from aiokafka.admin import AIOKafkaAdminClient

    if "_client" not in names(AIOKafkaAdminClient.__init__):
        out.append("AIOKafkaAdminClient has no _client")
    if not callable(getattr(AIOKafkaAdminClient, "_send_request", None)):
        out.append("AIOKafkaAdminClient._send_request is gone")
    return out


def admin_broker_count(admin: Any) -> int:
    """How many brokers a started admin client's metadata lists
    (``admin._client.cluster.brokers()``: the admin client has no public way to ask)."""
    return len(admin._client.cluster.brokers())


async def admin_send(admin: Any, request: Any) -> Any:
    """Send ``request`` through a started admin client to a broker it picks, and return the
    response (``admin._send_request``, what its public methods use)."""
    return await admin._send_request(request)


def install_produce_request() -> None:
    """Put :class:`ProduceRequest` into aiokafka's sender (idempotent); raises ``RuntimeError``
    naming what changed when this aiokafka is not the one it was written against."""
    found = problems()
    if found:
        import aiokafka

        raise RuntimeError(f"aiokafka {aiokafka.__version__} is not supported by rawcap's produce path "
                           f"({found[0]}); install the version pyproject.toml pins")
    from aiokafka.producer import sender

    sender.ProduceRequest = ProduceRequest


async def consumer_partitions(consumer: Any, topic: str, wait_s: float = 10.0) -> set[int]:
    """The partitions of ``topic`` as a group-less consumer sees them: it knows no topic
    metadata until told to track the topic (``_client._wait_on_metadata``, what aiokafka's
    producer calls in its public ``partitions_for``), waited for at most ``wait_s``; with
    ``wait_s=0`` one metadata refresh (``_client.force_metadata_update``) instead. Empty when
    the topic does not exist (yet); ``TopicAuthorizationFailedError`` when no ACL lets this
    client see it (the caller's one-line refusal, ``rawcap.kafka.kafka_cause``)."""
    from aiokafka.errors import TopicAuthorizationFailedError, UnknownTopicOrPartitionError

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        client = consumer._client
        with anyio.move_on_after(wait_s if wait_s > 0 else 30):
            try:
                if wait_s > 0:
                    await client._wait_on_metadata(topic)  # adds the topic, waits for it
                else:
                    await client.force_metadata_update()
            except UnknownTopicOrPartitionError:
                pass  # no such topic (yet): empty
        if topic in client.cluster.unauthorized_topics:
            raise TopicAuthorizationFailedError(topic)
        parts = consumer.partitions_for_topic(topic)
    return set(parts or ())
