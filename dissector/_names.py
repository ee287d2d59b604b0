"""Workload names on calls, cached per address for the times each answer holds."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rawcap.workloads import Workloads
    from schemas.k8s import Workload

__all__ = ("CallNamer",)


class CallNamer:
    """``Workloads.call_names`` (the four workload fields of a call, as of its time) with
    each address's answer cached for the times it holds (``WorkloadIndex.resolve_span``):
    the calls of a flow, and of every flow between the same pods, cost a dict lookup per
    end instead of two index walks. The cache is dropped whenever ``rawcap.k8s`` records
    are applied (``--follow``), so names are exactly what ``call_names`` gives."""

    __slots__ = ("_cache", "_epoch", "wl")

    def __init__(self, wl: Workloads) -> None:
        self.wl = wl
        self._cache: dict[str, tuple[int, int, tuple[str, str]]] = {}
        self._epoch = -1

    def __call__(self, src_ip: str, dst_ip: str, ts_ns: int) -> tuple[str, str, str, str]:
        if self._epoch != self.wl.records:
            self._cache.clear()
            self._epoch = self.wl.records
        return (*self._end(src_ip, ts_ns), *self._end(dst_ip, ts_ns))

    def _end(self, ip: str, ts_ns: int) -> tuple[str, str]:
        hit = self._cache.get(ip)
        if hit is not None and hit[0] <= ts_ns < hit[1]:
            return hit[2]
        try:
            packed = ipaddress.ip_address(ip.strip("[]")).packed
        except ValueError:
            names = ("", "")
            lo, hi = 0, 1 << 63
        else:
            wl, lo, hi = self.wl.index.resolve_span(packed, ts_ns)
            names = _short(wl)
        if len(self._cache) >= 65536:
            self._cache.clear()
        self._cache[ip] = (lo, hi, names)
        return names


def _short(wl: Workload | None) -> tuple[str, str]:
    """``Call.src_workload``/``src_namespace`` of one end (``rawcap.workloads.CallNames``)."""
    if wl is None:
        return "", ""
    return (wl.name if wl.kind == "pod" else f"{wl.kind}/{wl.name}"), wl.namespace

