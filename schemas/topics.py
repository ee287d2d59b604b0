"""Kafka topic names: the one place they are spelled.

Services talk to each other only through these topics, so a rename happens here or not at
all. ``TOPIC_CONFIGS`` holds the static per-topic settings; sizes that derive from the
values file (``retention.bytes`` of ``rawcap.packets``) are filled in by ``rawcap.kafka``.
"""

from __future__ import annotations

from typing import Final

__all__ = (
    "ALL_TOPICS",
    "CALLS",
    "CONTROL",
    "DLQ",
    "FLOWS",
    "K8S",
    "PACKETS",
    "PROCS",
    "TOPIC_CONFIGS",
)

PACKETS: Final = "rawcap.packets"
K8S: Final = "rawcap.k8s"
PROCS: Final = "rawcap.procs"
FLOWS: Final = "rawcap.flows"
CALLS: Final = "rawcap.calls"
CONTROL: Final = "rawcap.control"
DLQ: Final = "rawcap.dlq"

ALL_TOPICS: Final = (PACKETS, K8S, PROCS, FLOWS, CALLS, CONTROL, DLQ)

#: Largest batch the capture agent produces is ``capture.batch.maxBytes`` (default 1 MiB,
#: compressed); the topic accepts 8 MiB so that a larger configured batch still fits.
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024

TOPIC_CONFIGS: Final[dict[str, dict[str, str]]] = {
    PACKETS: {
        "cleanup.policy": "delete",
        "max.message.bytes": str(MAX_MESSAGE_BYTES),
        "message.timestamp.type": "CreateTime",
        # The cluster-side FIFO is retention.bytes alone. Time retention would delete
        # imported captures (message timestamp = packet time, often older than a week) and
        # the backlog a node ships after a long outage, in minutes.
        "retention.ms": "-1",
        # 1 GiB segments would never roll on a small retention; keep them modest so that
        # retention.bytes works as the cluster-side FIFO.
        "segment.bytes": str(64 * 1024 * 1024),
    },
    K8S: {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    PROCS: {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
    FLOWS: {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
    CALLS: {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
    CONTROL: {"cleanup.policy": "compact"},
    DLQ: {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)},
}
