"""Kafka access: client settings and topics, and the project's own client for bounded reads.

What it owns: how every service builds its aiokafka clients (TLS/SASL from the values file,
topic creation: ``_clients.py``), the plaintext client that reads a window of
``rawcap.packets`` without aiokafka (``_wire.py``), the zero-copy fetch decoder
(``_fetch.py``) and the shipper's pre-built produce requests (``_produce.py``).

Importing this package imports no aiokafka: a bounded read starts its lookups before aiokafka
(or even asyncio) is imported. The names that need aiokafka are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._fetch import FetchedRecord, Unsupported, parse_fetch_response, parse_record_batches
from ._fetcher import ConsumerFetcher, Fetcher, KafkaRecord
from ._wire import PartitionWindow, WindowLookup, WireFetcher, murmur2, node_partition, start_lookup

if TYPE_CHECKING:
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
    from ._produce import Framed, OneRecordBatch, install_produce_request

__all__ = (
    "TOPIC_MAX_REQUEST",
    "ConsumerFetcher",
    "FetchedRecord",
    "Fetcher",
    "Framed",
    "KafkaRecord",
    "OneRecordBatch",
    "PartitionWindow",
    "Unsupported",
    "WindowLookup",
    "WireFetcher",
    "admin_kwargs",
    "client_kwargs",
    "consumer_kwargs",
    "ensure_topics",
    "follow_topic",
    "install_produce_request",
    "make_consumer",
    "make_producer",
    "murmur2",
    "node_partition",
    "parse_fetch_response",
    "parse_record_batches",
    "producer_kwargs",
    "read_topic_to_end",
    "start_consumer",
    "start_lookup",
    "stop_client",
    "topic_partitions",
    "topic_specs",
)

#: Names whose module imports aiokafka: loaded on first use (PEP 562).
_LAZY = {
    **dict.fromkeys(
        ("TOPIC_MAX_REQUEST", "admin_kwargs", "client_kwargs", "consumer_kwargs", "ensure_topics",
         "follow_topic", "make_consumer", "make_producer", "producer_kwargs", "read_topic_to_end",
         "start_consumer", "stop_client", "topic_partitions", "topic_specs"),
        "._clients",
    ),
    **dict.fromkeys(("Framed", "OneRecordBatch", "install_produce_request"), "._produce"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
