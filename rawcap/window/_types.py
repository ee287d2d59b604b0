"""What the window reader hands out and keeps count of, and what a lane is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from schemas import BatchHeader

__all__ = (
    "FETCH_BATCHES",
    "MARGIN_NS",
    "Admitted",
    "Lane",
    "LaneValues",
    "MatchFn",
    "NodeStats",
    "RawBatch",
    "WPacket",
    "WindowStats",
)

#: Batches may start this long before --from and still hold packets inside the window.
MARGIN_NS = 15_000_000_000
#: Batches a lane hands on per step (bounded read-ahead).
FETCH_BATCHES = 32

#: A packet filter: ``match(data, origlen, ts_ns)`` (``PacketFilter.match``); ``ts_ns`` is the
#: packet's own time, which workload filters (``--namespace``/``--pod``) resolve at.
MatchFn = Callable[[bytes | memoryview, int, int], bool]

#: What a lane reads: ``(batch value, where it was read)``; the meta of a Kafka lane holds
#: ``partition``, ``offset``, ``key`` (the node name) and ``kafka_ts``, other lanes' ``source``.
LaneValues = list[tuple[bytes | memoryview, dict[str, Any]]]

#: An admitted batch: header, the value as read, where its body starts, where it was read.
Admitted = tuple[BatchHeader, bytes | memoryview, int, dict[str, Any]]


class WPacket(NamedTuple):
    """A packet with the node and interface name it was captured on."""

    ts_ns: int
    node: str
    iface: str
    caplen: int
    origlen: int
    pkttype: int
    data: bytes | memoryview


class RawBatch(NamedTuple):
    """A whole batch inside the window whose packets may be written as they are, in order."""

    header: BatchHeader
    #: decompressed body (rec or tpacket3 layout); still compressed from ``items(inflate=False)``
    body: bytes | memoryview
    value: bytes | memoryview  # the batch as it was read (for rawcap.dlq)
    meta: dict[str, Any]  # where it was read (partition, offset, key)
    source: str = ""  # the lane it came from (reported with a body that does not decompress)


@dataclass
class NodeStats:
    """What a read found of one node: batches, packets, sequence range, gaps, duplicates."""

    node: str
    batches: int = 0
    packets: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_ns: int | None = None
    last_ns: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)  # missing seq ranges, inclusive
    duplicates: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "packets": self.packets,
            "bytes": self.bytes,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "gaps": [list(g) for g in self.gaps],
            "duplicates": self.duplicates,
        }


@dataclass
class WindowStats:
    """Per-node statistics of a read, corrupt batches skipped, and notes on lost history."""

    nodes: dict[str, NodeStats] = field(default_factory=dict)
    corrupt: int = 0
    recycled: list[str] = field(default_factory=list)  # human-readable notes on lost history

    def node(self, name: str) -> NodeStats:
        st = self.nodes.get(name)
        if st is None:
            st = self.nodes[name] = NodeStats(name)
        return st

    @property
    def packets(self) -> int:
        return sum(s.packets for s in self.nodes.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.nodes.values())


class Lane(Protocol):
    """One ordered source of batch values."""

    name: str

    async def next_values(self) -> LaneValues | None:
        """Up to a few dozen ``(value, meta)`` pairs; ``[]`` = nothing yet, ``None`` = done."""
        ...

    async def aclose(self) -> None: ...
