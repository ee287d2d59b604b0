"""Records on ``rawcap.control`` (compacted): the switches other services flip at run time.

Keys say what a record controls, values are msgpack maps; the newest record per key wins.

- ``filter/<node>``: capture filter for one node's eBPF maps (``CaptureFilter``), written by
  ``rawcap k8s-watch`` from ``tap.regex``/``tap.namespaces``/``tap.excludedNamespaces``.
  The key ``filter/*`` applies to every node that has no record of its own.
- ``dissection``: real-time dissection on/off (``DissectionSwitch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = (
    "DISSECTION_KEY",
    "CaptureFilter",
    "DissectionSwitch",
    "decode_control",
    "filter_key",
)

DISSECTION_KEY = "dissection"


def filter_key(node: str) -> str:
    return f"filter/{node}"


@dataclass(frozen=True, slots=True)
class CaptureFilter:
    """Allowed/denied IPs, ports and protocols; empty allow sets mean "everything TCP/UDP"."""

    allow_ips: tuple[str, ...] = ()
    deny_ips: tuple[str, ...] = ()
    allow_ports: tuple[int, ...] = ()
    deny_ports: tuple[int, ...] = ()
    protocols: tuple[str, ...] = ()  # subset of ("tcp", "udp"); empty = both
    version: int = 0  # increases with every change, for logs and metrics

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "kind": "filter",
                "allow_ips": list(self.allow_ips),
                "deny_ips": list(self.deny_ips),
                "allow_ports": list(self.allow_ports),
                "deny_ports": list(self.deny_ports),
                "protocols": list(self.protocols),
                "version": self.version,
            },
            use_bin_type=True,
        )


@dataclass(frozen=True, slots=True)
class DissectionSwitch:
    enabled: bool
    stop_after_s: float = 0.0
    changed_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "kind": "dissection",
                "enabled": self.enabled,
                "stop_after_s": self.stop_after_s,
                "changed_by": self.changed_by,
            },
            use_bin_type=True,
        )


def decode_control(value: bytes) -> CaptureFilter | DissectionSwitch:
    """Decode a control record value; raises ValueError on anything unexpected."""
    doc = msgpack.unpackb(value, raw=False)
    if not isinstance(doc, dict):
        raise ValueError("control record is not a map")
    kind = doc.get("kind")
    if kind == "filter":
        return CaptureFilter(
            allow_ips=tuple(doc.get("allow_ips", ())),
            deny_ips=tuple(doc.get("deny_ips", ())),
            allow_ports=tuple(int(p) for p in doc.get("allow_ports", ())),
            deny_ports=tuple(int(p) for p in doc.get("deny_ports", ())),
            protocols=tuple(doc.get("protocols", ())),
            version=int(doc.get("version", 0)),
        )
    if kind == "dissection":
        return DissectionSwitch(
            enabled=bool(doc["enabled"]),
            stop_after_s=float(doc.get("stop_after_s", 0.0)),
            changed_by=str(doc.get("changed_by", "")),
        )
    raise ValueError(f"unknown control record kind {kind!r}")
