"""Test hygiene for ``rawcap.control``: the session's Kafka is shared by every test, and a
capture filter left behind (``filter/*`` = capture nothing) would silently narrow every
capture agent that a later test starts."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from rawcap.config import Config
from schemas import topics
from schemas.control import filter_key


async def clear_capture_filters(cfg: Config, *nodes: str) -> None:
    """Tombstones for ``filter/*`` and ``filter/<node>``: agents fall back to capturing all."""
    producer = AIOKafkaProducer(bootstrap_servers=cfg.get("kafka.bootstrap"))
    await producer.start()
    try:
        for key in (filter_key("*"), *(filter_key(n) for n in nodes)):
            await producer.send_and_wait(topics.CONTROL, None, key=key.encode())
    finally:
        await producer.stop()
