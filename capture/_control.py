"""Follows ``rawcap.control`` and applies this node's capture filter to the eBPF maps.

The topic is compacted and small, so every agent reads it whole from the beginning with
no consumer group (nothing to commit, nothing to rebalance) and keeps the newest
``filter/<node>`` and ``filter/*`` records. The node's own record wins; ``filter/*`` applies
when there is none; with neither, the filter is "everything TCP/UDP". A record that does
not decode or validate is logged and skipped: a bad control record must not stop capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from rawcap.config import Config
from rawcap.kafka import consumer_kwargs, topic_partitions
from schemas.control import CaptureFilter, decode_control, filter_key
from schemas.errors import RawcapError
from schemas.topics import CONTROL

__all__ = ("ControlFollower",)

log = logging.getLogger("rawcap.capture")


#: The broker holds an idle fetch this long (it answers at once when a record arrives, so
#: this is not the update latency). aiokafka's default of 0.5 s meant two fetch round trips
#: a second on an idle node, a visible part of the agent's idle CPU.
_IDLE_WAIT_MS = 5000


def _consumer_config(cfg: Config) -> dict[str, Any]:
    # consumer_timeout_ms paces aiokafka's background fetch routine (default 0.2 s: five
    # wake-ups a second on an idle node); a fetch answer still wakes it at once.
    return consumer_kwargs(cfg, None, enable_auto_commit=False, auto_offset_reset="earliest",
                           fetch_max_wait_ms=_IDLE_WAIT_MS, consumer_timeout_ms=_IDLE_WAIT_MS)


class ControlFollower:
    def __init__(self, cfg: Config, node: str, apply: Callable[[CaptureFilter], None], *,
                 on_synced: Callable[[], None] | None = None) -> None:
        self.cfg, self.node, self._apply = cfg, node, apply
        self._on_synced = on_synced  # called once, when the topic has been read to its end
        self._records: dict[str, CaptureFilter | None] = {}
        self._active: CaptureFilter | None = None

    def _choose(self) -> None:
        chosen = self._records.get(filter_key(self.node)) or self._records.get("filter/*") \
            or CaptureFilter()
        if chosen != self._active:
            try:
                self._apply(chosen)
                self._active = chosen
            except RawcapError as exc:
                log.error("capture filter rejected: %s", exc)

    def handle(self, key: bytes | None, value: bytes | None) -> None:
        k = key.decode(errors="replace") if key else ""
        if not k.startswith("filter/"):
            return
        if k not in (filter_key(self.node), "filter/*"):
            return
        if value is None:  # tombstone
            self._records[k] = None
        else:
            try:
                rec = decode_control(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("undecodable control record %s: %s", k, exc)
                return
            if not isinstance(rec, CaptureFilter):
                return
            self._records[k] = rec
        self._choose()

    async def run(self) -> None:
        """Follow the topic until cancelled; reconnects with backoff when the broker is away."""
        while True:
            consumer = AIOKafkaConsumer(**_consumer_config(self.cfg))
            try:
                await consumer.start()
                tps = await topic_partitions(consumer, CONTROL, wait_s=0)
                if not tps:
                    raise KafkaError(f"topic {CONTROL} does not exist yet")
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps) if self._on_synced is not None else {}
                while True:
                    if ends and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                        ends = {}
                        if self._on_synced is not None:
                            self._on_synced()
                            self._on_synced = None
                    got = await consumer.getmany(timeout_ms=_IDLE_WAIT_MS, max_records=500)
                    for records in got.values():
                        for rec in records:
                            self.handle(rec.key, rec.value)
            except (KafkaError, OSError) as exc:
                log.warning("control topic: %s; retrying", exc or type(exc).__name__)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await consumer.stop()
            await anyio.sleep(2)
