"""Which interfaces to capture on, so that a packet is kept once where possible.

``capture.iface`` is ``any``, one name, or a comma-separated list of names and shell
globs (``veth*,cali*,eth0``). ``any`` means every interface except loopback and bridge
devices: a bridge repeats what its ports (the pod veths) already carried, so capturing
both would keep every pod packet twice. Interfaces come and go with pods, so a set that
contains globs or ``any`` is re-resolved every few seconds and pushed into the eBPF
``ifaces`` map; the ring itself never reopens.
"""

from __future__ import annotations

import fnmatch
import os
import socket
from dataclasses import dataclass

from ._ring import NoSuchInterface

__all__ = ("IfaceSelection", "resolve")

_SYS = "/sys/class/net"


@dataclass(frozen=True, slots=True)
class IfaceSelection:
    """``single`` is the ifindex to bind the ring to when exactly one named interface was
    asked for (the kernel then filters by interface); otherwise the ring binds to all and
    the eBPF map restricts it to ``ifaces``."""

    spec: str
    ifaces: dict[int, str]
    single: int | None
    dynamic: bool


def _all_ifaces() -> dict[str, int]:
    return {name: idx for idx, name in socket.if_nameindex()}


def _is_bridge(name: str) -> bool:
    return os.path.isdir(os.path.join(_SYS, name, "bridge"))


def resolve(spec: str) -> IfaceSelection:
    spec = spec.strip() or "any"
    present = _all_ifaces()
    chosen: dict[int, str]
    if spec == "any":
        chosen = {idx: n for n, idx in present.items() if n != "lo" and not _is_bridge(n)}
        return IfaceSelection(spec, chosen, None, True)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    dynamic = any(any(ch in p for ch in "*?[") for p in parts)
    chosen = {}
    for p in parts:
        if any(ch in p for ch in "*?["):
            for n, idx in present.items():
                if fnmatch.fnmatchcase(n, p):
                    chosen[idx] = n
        elif p in present:
            chosen[present[p]] = p
        else:
            raise NoSuchInterface(f"interface {p!r} does not exist on this node (capture.iface)")
    if len(parts) == 1 and not dynamic:
        idx = next(iter(chosen))
        return IfaceSelection(spec, chosen, idx, False)
    return IfaceSelection(spec, chosen, None, dynamic)
