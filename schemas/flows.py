"""Records on ``rawcap.flows``: one per flow and interval, with workload and process context.

Written by ``rawcap enrich``, read by ``rawcap flows`` and anything downstream. The record is
keyed by node name (one node's flows stay in order in one partition) and its value is a
msgpack map with ``"v": 1``; a reader rejects another major version.

Direction: ``src`` is the side that opened the flow when that is visible (the sender of a TCP
SYN, or the receiver of a SYN-ACK), otherwise the sender of the first packet seen. ``fwd``
counters are src -> dst, ``rev`` counters dst -> src. Workloads are resolved as of the flow's
``first_ns`` (pod IPs are reused: a lookup "as of now" could name a different pod).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .errors import RawcapError
from .k8s import Workload

__all__ = ("FLOWS_VERSION", "TCP_FLAGS", "FlowRecord", "ProcessInfo", "UnsupportedFlow",
           "decode_flow", "encode_flow", "flags_text")

FLOWS_VERSION: Final = 1
_packb = msgpack.Packer(use_bin_type=True).pack
TCP_FLAGS: Final = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


class UnsupportedFlow(RawcapError):
    """A ``rawcap.flows`` value this reader cannot decode."""


def flags_text(flags: int) -> str:
    return ",".join(name for bit, name in enumerate(TCP_FLAGS) if flags & (1 << bit))


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The process behind one end of a flow (from ``rawcap.procs``)."""

    pid: int
    comm: str = ""
    container_id: str = ""
    cgroup_id: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "container_id": self.container_id,
                "cgroup_id": self.cgroup_id}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    node: str
    proto: str  # "tcp" | "udp"
    src: str
    sport: int
    dst: str
    dport: int
    first_ns: int
    last_ns: int
    interval_ns: int  # start of the interval this record covers
    packets_fwd: int = 0
    bytes_fwd: int = 0
    packets_rev: int = 0
    bytes_rev: int = 0
    flags_fwd: int = 0  # OR of TCP flags src -> dst
    flags_rev: int = 0
    src_workload: Workload | None = None
    dst_workload: Workload | None = None
    src_process: ProcessInfo | None = None
    dst_process: ProcessInfo | None = None

    @property
    def tcp_flags(self) -> str:
        return flags_text(self.flags_fwd | self.flags_rev)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the one ``rawcap flows --json`` prints)."""
        doc: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Workload | ProcessInfo):
                value = value.as_dict()
            doc[name] = value
        doc["tcp_flags"] = self.tcp_flags
        return doc


def _wl(doc: Any) -> Workload | None:
    if not doc:
        return None
    return Workload(**{k: str(doc.get(k, "")) for k in Workload.__slots__})


def _proc(doc: Any) -> ProcessInfo | None:
    if not doc:
        return None
    return ProcessInfo(int(doc.get("pid", 0)), str(doc.get("comm", "")),
                       str(doc.get("container_id", "")), int(doc.get("cgroup_id", 0)))


def encode_flow(rec: FlowRecord) -> bytes:
    """The value on ``rawcap.flows``: the fields of :meth:`FlowRecord.as_dict` (less the
    derived ``tcp_flags``) plus ``"v"``; spelled out because the enricher encodes every flow."""
    sw, dw, sp, dp = rec.src_workload, rec.dst_workload, rec.src_process, rec.dst_process
    return _packb({
        "node": rec.node, "proto": rec.proto, "src": rec.src, "sport": rec.sport, "dst": rec.dst,
        "dport": rec.dport, "first_ns": rec.first_ns, "last_ns": rec.last_ns,
        "interval_ns": rec.interval_ns, "packets_fwd": rec.packets_fwd, "bytes_fwd": rec.bytes_fwd,
        "packets_rev": rec.packets_rev, "bytes_rev": rec.bytes_rev, "flags_fwd": rec.flags_fwd,
        "flags_rev": rec.flags_rev,
        "src_workload": None if sw is None else sw.as_dict(),
        "dst_workload": None if dw is None else dw.as_dict(),
        "src_process": None if sp is None else sp.as_dict(),
        "dst_process": None if dp is None else dp.as_dict(),
        "v": FLOWS_VERSION,
    })


def decode_flow(value: bytes) -> FlowRecord:
    try:
        doc = msgpack.unpackb(value, raw=False)
    except Exception as exc:
        raise UnsupportedFlow(f"rawcap.flows value is not msgpack: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != FLOWS_VERSION:
        version = doc.get("v") if isinstance(doc, dict) else None
        raise UnsupportedFlow(f"rawcap.flows record version {version!r} is not supported")
    try:
        return FlowRecord(
            node=doc["node"], proto=doc["proto"], src=doc["src"], sport=int(doc["sport"]),
            dst=doc["dst"], dport=int(doc["dport"]), first_ns=int(doc["first_ns"]),
            last_ns=int(doc["last_ns"]), interval_ns=int(doc["interval_ns"]),
            packets_fwd=int(doc.get("packets_fwd", 0)), bytes_fwd=int(doc.get("bytes_fwd", 0)),
            packets_rev=int(doc.get("packets_rev", 0)), bytes_rev=int(doc.get("bytes_rev", 0)),
            flags_fwd=int(doc.get("flags_fwd", 0)), flags_rev=int(doc.get("flags_rev", 0)),
            src_workload=_wl(doc.get("src_workload")), dst_workload=_wl(doc.get("dst_workload")),
            src_process=_proc(doc.get("src_process")), dst_process=_proc(doc.get("dst_process")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedFlow(f"rawcap.flows record is malformed: {exc!r}") from None
