"""Consumer lag as Prometheus metrics, the same names for every consumer group.

Each instance of a group exports what it owns: ``rawcap_consumer_lag_records{group,topic,
partition}`` (the partition's high watermark minus this instance's position), their sum
``rawcap_consumer_lag_total_records{group}`` and ``rawcap_consumer_partitions{group}``
(how many partitions it owns; a rebalance after an instance died shows here). Summed over
the instances of a group (``sum by (group)``) it is the group's lag.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Gauge, start_http_server

__all__ = ("GroupLag", "serve_metrics")

log = logging.getLogger("rawcap.lag")


class GroupLag:
    """The lag gauges of one consumer group in ``registry``; :meth:`update` reads a started
    aiokafka consumer's assignment and positions and asks the leaders for the partitions'
    end offsets (one ListOffsets round: the high watermark a fetch reports is unknown until
    the first fetch of a partition returns, which would read as no lag)."""

    def __init__(self, group: str, registry: CollectorRegistry) -> None:
        self.group = group
        self.records = Gauge("rawcap_consumer_lag_records",
                             "records past this instance's position, per partition it owns",
                             ("group", "topic", "partition"), registry=registry)
        self.total = Gauge("rawcap_consumer_lag_total_records",
                           "records past this instance's positions, all partitions it owns",
                           ("group",), registry=registry).labels(group)
        self.owned = Gauge("rawcap_consumer_partitions", "partitions this instance owns",
                           ("group",), registry=registry).labels(group)
        self._labels: set[tuple[str, str]] = set()
        self.last_total = 0

    async def update(self, consumer: Any) -> int:
        """Refresh from ``consumer``; returns the total lag (records). Never raises: a
        partition revoked meanwhile (a rebalance) or a broker that does not answer leaves
        that partition out until the next update."""
        total, now = 0, set()
        assigned = list(consumer.assignment())
        ends: dict[Any, int] = {}
        if assigned:
            try:
                with anyio.move_on_after(5):
                    ends = await consumer.end_offsets(assigned)
            except Exception as exc:  # a metric never stops a consumer
                log.debug("end offsets for the lag gauge: %r", exc)
        for tp in assigned:
            hw = ends.get(tp)
            if hw is None:
                continue
            try:
                with anyio.move_on_after(1):
                    pos = await consumer.position(tp)
                    lag = max(0, hw - pos)
                    key = (tp.topic, str(tp.partition))
                    self.records.labels(self.group, *key).set(lag)
                    now.add(key)
                    total += lag
            except Exception as exc:  # revoked by a rebalance since assignment() was read
                log.debug("position of %s for the lag gauge: %r", tp, exc)
        for key in self._labels - now:
            try:
                self.records.remove(self.group, *key)
            except KeyError:
                pass
        self._labels = now
        self.total.set(total)
        self.owned.set(len(assigned))
        self.last_total = total
        return total

    async def run(self, consumer: Any, every: float = 2.0) -> None:
        """:meth:`update` every ``every`` seconds until cancelled."""
        while True:
            await self.update(consumer)
            await anyio.sleep(every)


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> Any:
    """Expose ``registry`` on ``/metrics`` (a daemon thread); returns (server, thread)."""
    return start_http_server(port, addr=addr, registry=registry)
