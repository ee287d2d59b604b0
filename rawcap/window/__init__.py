"""Time-window reads: ``--from/--to`` over ``rawcap.packets``, a node FIFO buffer, an archive
or a snapshot, as one time-ordered stream of packets.

What it owns: the forensics read engine that every command reading packets goes through
(``rawcap consume``, ``pcap export``, ``snapshot``, ``dissect --from/--to``). A *lane* is one
ordered sequence of batch values: a Kafka partition (possibly shared by several nodes; the
record key and the batch header name the node; ``_kafka.py``), a node's FIFO buffer
directory or any async iterator of values, e.g. a snapshot's or the archive's
(``_lanes.py``). Batch headers are checked for window, node, duplicates and sequence gaps
(``_admission.py``), nodes are merged by time (``_merge.py``) or, with ``--follow``, tailed
live (``_follow.py``). :class:`WindowReader` (``_reader.py``) puts them together; a corrupt
batch is counted, sent to ``rawcap.dlq`` when it came from Kafka, and skipped.
"""

from ._kafka import KafkaLane, kafka_client_kwargs, node_partition, start_kafka_lookup
from ._lanes import FileLane, ValueLane, local_lanes
from ._merge import READ_AHEAD_BYTES
from ._reader import WindowReader
from ._types import MARGIN_NS, Lane, LaneValues, MatchFn, NodeStats, RawBatch, WindowStats, WPacket

__all__ = (
    "MARGIN_NS",
    "READ_AHEAD_BYTES",
    "FileLane",
    "KafkaLane",
    "Lane",
    "LaneValues",
    "MatchFn",
    "NodeStats",
    "RawBatch",
    "ValueLane",
    "WPacket",
    "WindowReader",
    "WindowStats",
    "kafka_client_kwargs",
    "local_lanes",
    "node_partition",
    "start_kafka_lookup",
)
