"""Shared Kafka plumbing: aiokafka settings from the values file, and topic creation.

Every service builds its clients through :func:`producer_kwargs` / :func:`consumer_kwargs`
(or the small factories below) so that TLS and SASL settings reach all of them the same way,
and calls :func:`ensure_topics` once at start: rawcap creates the topics it uses, with
explicit configs, on first use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.helpers import create_ssl_context

from schemas.errors import ConfigError, TransportError
from schemas.topics import ALL_TOPICS, PACKETS, TOPIC_CONFIGS

from ..config import Config

__all__ = (
    "TOPIC_MAX_REQUEST",
    "admin_kwargs",
    "client_kwargs",
    "consumer_kwargs",
    "ensure_topics",
    "follow_topic",
    "make_consumer",
    "make_producer",
    "producer_kwargs",
    "read_topic_to_end",
    "start_consumer",
    "stop_client",
    "topic_partitions",
    "topic_specs",
)

log = logging.getLogger("rawcap.kafka")

_TOPIC_ALREADY_EXISTS = 36
#: TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED
_NOT_OURS = (29, 31)

#: A producer request / fetch must fit the largest batch the topic accepts.
TOPIC_MAX_REQUEST = int(TOPIC_CONFIGS[PACKETS]["max.message.bytes"]) + 64 * 1024


def client_kwargs(cfg: Config) -> dict[str, Any]:
    """Connection settings common to producers, consumers and the admin client."""
    bootstrap = cfg.get("kafka.bootstrap")
    if not bootstrap:
        raise ConfigError(
            "kafka.bootstrap is not set: pass --bootstrap HOST:PORT or set RAWCAP_BOOTSTRAP "
            "(`rawcap stack status` prints the local one)"
        )
    protocol = cfg.get("kafka.securityProtocol")
    kw: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap.split(",") if s.strip()],
        "client_id": cfg.get("kafka.clientId"),
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        ca, cert, key = (cfg.get(f"kafka.tls.{k}") for k in ("caFile", "certFile", "keyFile"))
        if bool(cert) != bool(key):
            raise ConfigError("kafka.tls.certFile and kafka.tls.keyFile must be set together")
        try:
            kw["ssl_context"] = create_ssl_context(cafile=ca or None, certfile=cert or None,
                                                   keyfile=key or None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"kafka.tls: cannot load CA/certificate/key: {exc}") from None
    if protocol.startswith("SASL_"):
        user, password = cfg.get("kafka.sasl.username"), cfg.get("kafka.sasl.password")
        if not user:
            raise ConfigError(f"kafka.sasl.username is required with kafka.securityProtocol={protocol}")
        kw.update(sasl_mechanism=cfg.get("kafka.sasl.mechanism"),
                  sasl_plain_username=user, sasl_plain_password=password)
    return kw


def producer_kwargs(cfg: Config, **extra: Any) -> dict[str, Any]:
    """AIOKafkaProducer settings: batches are already zstd-compressed, so no codec on top."""
    kw = client_kwargs(cfg)
    kw.update(acks="all", enable_idempotence=True, max_request_size=TOPIC_MAX_REQUEST,
              linger_ms=5, request_timeout_ms=30_000)
    kw.update(extra)
    return kw


def consumer_kwargs(cfg: Config, group_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """AIOKafkaConsumer settings; offsets are committed by the caller after side effects."""
    kw = client_kwargs(cfg)
    kw.update(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
              max_partition_fetch_bytes=TOPIC_MAX_REQUEST, fetch_max_bytes=4 * TOPIC_MAX_REQUEST)
    kw.update(extra)
    return kw


def admin_kwargs(cfg: Config, **extra: Any) -> dict[str, Any]:
    kw = client_kwargs(cfg)
    kw.update(extra)
    return kw


def make_producer(cfg: Config, **extra: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**producer_kwargs(cfg, **extra))


def make_consumer(cfg: Config, *topics: str, group_id: str | None = None,
                  **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **consumer_kwargs(cfg, group_id, **extra))



def topic_specs(cfg: Config, brokers: int = 1) -> list[NewTopic]:
    """All rawcap topics with explicit configs; the packets topic sized from the values file.

    Replication: ``kafka.topics.replicationFactor``, or 0 (the default) for 3 on a cluster
    of ``brokers`` >= 3 and 1 otherwise; with replication above 1 ``min.insync.replicas``
    is ``kafka.topics.minInsyncReplicas``, or 0 for 2 (so that an ``acks=all`` write
    survives losing any one broker and is refused rather than kept once when two are down).
    """
    replication = cfg.get("kafka.topics.replicationFactor") or (3 if brokers >= 3 else 1)
    min_isr = cfg.get("kafka.topics.minInsyncReplicas") or min(2, max(1, replication - 1))
    specs = []
    for name in ALL_TOPICS:
        configs = dict(TOPIC_CONFIGS.get(name, {}))
        if replication > 1 or cfg.source("kafka.topics.minInsyncReplicas") != "default":
            configs["min.insync.replicas"] = str(min_isr)
        partitions = 1
        if name == PACKETS:
            partitions = cfg.get("kafka.topics.packets.partitions")
            configs["retention.bytes"] = str(cfg.get("tap.capture.raw.storageSize"))
        specs.append(NewTopic(name, partitions, replication, topic_configs=configs))
    return specs


async def ensure_topics(cfg: Config, retry_for: float = 60.0) -> list[str]:
    """Create the rawcap topics that do not exist yet; returns the names it created.

    Idempotent: an existing topic is left as it is. Retries while the broker is still
    starting, for up to ``retry_for`` seconds, then raises :class:`TransportError`.
    """
    deadline = time.monotonic() + retry_for
    last: Exception | None = None
    while True:
        admin = AIOKafkaAdminClient(**admin_kwargs(cfg, request_timeout_ms=15_000))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            from ._compat import admin_broker_count

            brokers = admin_broker_count(admin)
            missing = [t for t in topic_specs(cfg, brokers) if t.name not in existing]
            if not missing:
                return []
            resp = await admin.create_topics(missing, timeout_ms=15_000)
            created, retry = [], False
            for err in resp.topic_errors:
                name, code = err[0], err[1]
                if code == 0:
                    created.append(name)
                elif code in _NOT_OURS:
                    # A service user of a secured cluster: it sees (and may create) only its
                    # own topics; the others are the operator's to create.
                    log.debug("not allowed to create Kafka topic %s (left to the operator)", name)
                elif code != _TOPIC_ALREADY_EXISTS:
                    exc = for_code(code)
                    if getattr(exc, "retriable", False):
                        retry = True
                        last = exc(f"creating {name}")
                    else:
                        message = err[2] if len(err) > 2 and err[2] else exc.__name__
                        raise TransportError(f"creating Kafka topic {name} failed: {message}")
            if created:
                log.info("created Kafka topics: %s", ", ".join(created))
            if not retry:
                return created
        except KafkaError as exc:
            last = exc
        finally:
            await admin.close()
        if time.monotonic() >= deadline:
            raise TransportError(
                f"cannot create Kafka topics at {cfg.get('kafka.bootstrap')}: {last!r}"
            )
        await anyio.sleep(0.5)


async def stop_client(client: Any) -> None:
    """Stop an aiokafka client even while being cancelled (shielded, bounded).

    aiokafka's group-less consumer awaits a task it has just cancelled on stop, which leaks a
    CancelledError of its own; inside the shield none can be ours, so it is swallowed here.
    """
    with anyio.move_on_after(15, shield=True):
        try:
            await client.stop()
        except asyncio.CancelledError:
            pass


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str,
                           wait_s: float = 10.0) -> list[TopicPartition]:
    """The partitions of ``topic`` (a group-less consumer knows no topic metadata yet)."""
    from ._compat import consumer_partitions

    return [TopicPartition(topic, p) for p in sorted(await consumer_partitions(consumer, topic, wait_s))]


async def start_consumer(cfg: Config, purpose: str = "") -> AIOKafkaConsumer:
    """A started group-less consumer (assign/seek yourself), or a one-line
    :class:`TransportError` naming the bootstrap (and ``purpose``, e.g. " to read rawcap.k8s")
    when the broker cannot be reached within 30 s."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(cfg, None))
    try:
        with anyio.fail_after(30):
            await consumer.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        await stop_client(consumer)
        where = cfg.get("kafka.bootstrap")
        raise TransportError(f"cannot reach Kafka at {where}{purpose}: {exc!r}") from None
    return consumer


async def read_topic_to_end(cfg: Config, topic: str, apply: Callable[[Any], None], *,
                            wait_s: float = 60.0) -> None:
    """Apply every record of ``topic`` from the beginning to its end as of now, once (the
    compacted state topics: ``rawcap.k8s``, ``rawcap.control``). A topic that does not exist
    yet is empty; a broker that cannot be reached is a :class:`TransportError`."""
    consumer = await start_consumer(cfg, f" to read {topic}")
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        with anyio.fail_after(wait_s):
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                got = await consumer.getmany(timeout_ms=500, max_records=5000)
                for recs in got.values():
                    for r in recs:
                        apply(r)
    finally:
        await stop_client(consumer)


async def follow_topic(cfg: Config, topic: str, apply: Callable[[Any], None],
                       ready: anyio.Event | None = None) -> None:
    """Apply every record of ``topic`` from the beginning, then new ones, until cancelled;
    ``ready`` is set once the end as of the start has been reached."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(cfg, None, metadata_max_age_ms=5000))
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        while not tps:
            tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            got = await consumer.getmany(timeout_ms=300, max_records=5000)
            for recs in got.values():
                for r in recs:
                    apply(r)
            if ready is not None and not ready.is_set() and \
                    all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                ready.set()
    finally:
        await stop_client(consumer)
