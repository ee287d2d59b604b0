"""Shared Kafka plumbing: aiokafka settings from the values file, and topic creation.

Every service builds its clients through :func:`producer_kwargs` / :func:`consumer_kwargs`
(or the small factories below) so that TLS and SASL settings reach all of them the same way,
and calls :func:`ensure_topics` once at start: rawcap creates the topics it uses, with
explicit configs, on first use.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.helpers import create_ssl_context

from schemas.errors import ConfigError, TransportError
from schemas.topics import ALL_TOPICS, PACKETS, TOPIC_CONFIGS

from .config import Config

__all__ = (
    "TOPIC_MAX_REQUEST",
    "admin_kwargs",
    "client_kwargs",
    "consumer_kwargs",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "producer_kwargs",
    "topic_specs",
)

log = logging.getLogger("rawcap.kafka")

_TOPIC_ALREADY_EXISTS = 36

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



def topic_specs(cfg: Config) -> list[NewTopic]:
    """All rawcap topics with explicit configs; the packets topic sized from the values file."""
    replication = cfg.get("kafka.topics.replicationFactor")
    specs = []
    for name in ALL_TOPICS:
        configs = dict(TOPIC_CONFIGS.get(name, {}))
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
            missing = [t for t in topic_specs(cfg) if t.name not in existing]
            if not missing:
                return []
            resp = await admin.create_topics(missing, timeout_ms=15_000)
            created, retry = [], False
            for err in resp.topic_errors:
                name, code = err[0], err[1]
                if code == 0:
                    created.append(name)
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
