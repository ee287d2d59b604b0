"""Kafka access: client settings and topics, the one produce path, and the project's own
client for bounded reads.

What it owns:

- ``_clients.py``: how every service builds its aiokafka clients (TLS/SASL from the values
  file) and creates the topics;
- ``_codec.py``: the wire protocol as functions of bytes (requests, responses, v2 record
  batches), no I/O;
- ``_wire.py``: the plaintext client of bounded reads, a thin socket driver over the codec
  (:class:`WindowLookup`, :class:`WireFetcher`, and :class:`AssignedFetchers` for a
  consumer group's partitions);
- ``_fetcher.py``: the :class:`Fetcher` protocol a reader of one partition drives, and its
  stock-aiokafka implementation (:class:`ConsumerFetcher`): the two read paths;
- ``_producer.py``: :class:`BatchProducer`, the one produce path of ``rawcap.packets`` (and
  of ``rawcap enrich``'s ``rawcap.flows`` records, many small values per record batch);
- ``_compat.py``: every use of aiokafka's internals, each checked (:func:`aiokafka_problems`);
- ``_diag.py``: why a secured Kafka refused, in one line (:func:`kafka_cause`, :func:`probe`:
  its own TLS + SASL login, requests from the codec);
- ``_lag.py``: a consumer group's lag as Prometheus gauges (:class:`GroupLag`), the same
  names for every group, and their ``/metrics`` server.

Importing this package imports no aiokafka: a bounded read starts its lookups before aiokafka
(or even asyncio) is imported. The names that need aiokafka (or ssl, prometheus_client) are
loaded on first use.
"""

from __future__ import annotations

import importlib
import typing

from ._codec import FetchedRecord, Framed, Unsupported, murmur2, node_partition
from ._fetcher import ConsumerFetcher, Fetcher, KafkaRecord
from ._wire import AssignedFetchers, PartitionWindow, WindowLookup, WireFetcher, start_lookup
from ._wire import enabled as wire_enabled

if typing.TYPE_CHECKING:
    from ._clients import (
        TOPIC_MAX_REQUEST,
        admin_kwargs,
        client_kwargs,
        consumer_kwargs,
        ensure_topics,
        follow_topic,
        make_consumer,
        make_producer,
        producer_kwargs,
        read_topic_to_end,
        start_consumer,
        stop_client,
        topic_partitions,
        topic_specs,
    )
    from ._compat import admin_send
    from ._compat import problems as aiokafka_problems
    from ._diag import kafka_cause, probe, scram_client_final
    from ._dlq import DeadLetters
    from ._lag import GroupLag, serve_metrics
    from ._producer import BatchProducer

__all__ = (
    "TOPIC_MAX_REQUEST",
    "AssignedFetchers",
    "BatchProducer",
    "ConsumerFetcher",
    "DeadLetters",
    "FetchedRecord",
    "Fetcher",
    "Framed",
    "GroupLag",
    "KafkaRecord",
    "PartitionWindow",
    "Unsupported",
    "WindowLookup",
    "WireFetcher",
    "admin_kwargs",
    "admin_send",
    "aiokafka_problems",
    "client_kwargs",
    "consumer_kwargs",
    "ensure_topics",
    "follow_topic",
    "kafka_cause",
    "make_consumer",
    "make_producer",
    "murmur2",
    "node_partition",
    "probe",
    "producer_kwargs",
    "read_topic_to_end",
    "scram_client_final",
    "serve_metrics",
    "start_consumer",
    "start_lookup",
    "stop_client",
    "topic_partitions",
    "topic_specs",
    "wire_enabled",
)

#: Names whose module imports aiokafka: loaded on first use (PEP 562).
_LAZY = {
    **{name: ("._clients", name) for name in (
        "TOPIC_MAX_REQUEST", "admin_kwargs", "client_kwargs", "consumer_kwargs", "ensure_topics",
        "follow_topic", "make_consumer", "make_producer", "producer_kwargs", "read_topic_to_end",
        "start_consumer", "stop_client", "topic_partitions", "topic_specs")},
    "BatchProducer": ("._producer", "BatchProducer"),
    "DeadLetters": ("._dlq", "DeadLetters"),
    **{name: ("._diag", name) for name in ("kafka_cause", "probe", "scram_client_final")},
    **{name: ("._lag", name) for name in ("GroupLag", "serve_metrics")},
    "aiokafka_problems": ("._compat", "problems"),
    "admin_send": ("._compat", "admin_send"),
}


def __getattr__(name: str) -> typing.Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home[0], __name__), home[1])
    globals()[name] = value
    return value
