"""Workload context for any command that reads packets or calls: who held an IP, and when.

``rawcap k8s-watch`` keeps the compacted topic ``rawcap.k8s`` (``schemas.k8s``); this module
reads it into a :class:`schemas.k8s.WorkloadIndex` and answers, per packet, which pod,
service or node each end belonged to **at the packet's time** (pod IPs are reused). It is
shared plumbing so that forensics (``--namespace``/``--pod``, pcapng per-packet comments) and
the dissector (workload names on calls) resolve exactly as ``rawcap enrich`` does, without
importing another service.

Typical use::

    wl = await Workloads.load(cfg)                       # rawcap.k8s read to its end
    # (or: tg.start_soon(wl.follow, cfg, ready) to keep following it, for live dissection)
    flt = WorkloadFilter(wl, namespaces=["shop"], pods=["^web-"])
    flt.match(packet.data, packet.origlen, packet.ts_ns)  # either end matches
    wl.comment(packet.data, packet.ts_ns)                # b"src=pod/shop/web-1 (...) dst=..."
    wl.call_names(call.src_ip, call.dst_ip, call.ts_ns)  # -> Call.src_workload & co

Matching rules (the same as ``rawcap flows``): several ``--namespace`` values or several
``--pod`` regexes are alternatives; ``--namespace`` and ``--pod`` together must hold for the
same end; ``--namespace`` matches pods and services (a packet to a ClusterIP of ``shop`` is
``shop`` traffic), ``--pod`` matches pod names only. A packet that is not TCP/UDP over IP
cannot be attributed and does not match.

Limitation: ``rawcap.k8s`` is compacted, so a window older than the topic's compaction lag
may only know the newest owner of each pod name; an IP is then unattributed rather than
misattributed (lookups are by validity interval).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import anyio

from schemas import topics
from schemas.errors import ConfigError
from schemas.k8s import UnsupportedRecord, Workload, WorkloadIndex

from .config import Config
from .kafka import follow_topic, read_topic_to_end
from .packet import parse_l4

__all__ = ("CallNames", "WorkloadFilter", "Workloads", "workload_label")


def workload_label(wl: Workload | None) -> str:
    """``pod/shop/web-1 (Deployment/web) svc=web``, ``service/shop/web``, ``node/n1``; "" if None."""
    if wl is None:
        return ""
    text = f"{wl.kind}/{wl.namespace}/{wl.name}" if wl.namespace else f"{wl.kind}/{wl.name}"
    if wl.owner_kind:
        text += f" ({wl.owner_kind}/{wl.owner_name})"
    if wl.kind == "pod" and wl.service:
        text += f" svc={wl.service}"
    return text


class CallNames(NamedTuple):
    """The workload fields of ``schemas.calls.Call``: a pod's name, ``service/NAME`` or
    ``node/NAME``, and its namespace ("" for nodes and unknown addresses)."""

    src_workload: str
    src_namespace: str
    dst_workload: str
    dst_namespace: str


def _short(wl: Workload | None) -> tuple[str, str]:
    if wl is None:
        return "", ""
    return (wl.name if wl.kind == "pod" else f"{wl.kind}/{wl.name}"), wl.namespace


@functools.lru_cache(maxsize=1 << 16)  # a call's two addresses: parsing is most of the cost
def _packed(ip: str) -> bytes | None:
    try:
        return ipaddress.ip_address(ip.strip("[]")).packed
    except ValueError:
        return None


class Workloads:
    """An IP -> workload-as-of-time index fed from ``rawcap.k8s``; lookups are sans-I/O."""

    def __init__(self, index: WorkloadIndex | None = None) -> None:
        self.index = index if index is not None else WorkloadIndex()
        self.records = 0
        self.bad = 0

    @classmethod
    async def load(cls, cfg: Config, *, wait_s: float = 60.0) -> Workloads:
        """Read ``rawcap.k8s`` from the beginning to its current end (once)."""
        self = cls()
        await read_topic_to_end(cfg, topics.K8S, self._apply_record, wait_s=wait_s)
        return self

    async def follow(self, cfg: Config, ready: anyio.Event | None = None) -> None:
        """Read ``rawcap.k8s`` from the beginning and keep applying new records until
        cancelled (live dissection); ``ready`` is set once the topic's end at start is reached."""
        await follow_topic(cfg, topics.K8S, self._apply_record, ready)

    def _apply_record(self, r: Any) -> None:
        self.apply(r.key, r.value, r.timestamp)

    def apply(self, key: bytes | str | None, value: bytes | None, timestamp_ms: int) -> None:
        """One ``rawcap.k8s`` message (value None is a tombstone); a bad one is counted."""
        if not key:
            return
        try:
            self.index.apply_value(key.decode() if isinstance(key, bytes) else key, value,
                                   timestamp_ms * 1_000_000)
            self.records += 1
        except (UnsupportedRecord, ValueError, OSError):
            self.bad += 1

    # -- lookups --------------------------------------------------------------------------
    def ends(self, data: bytes | memoryview, ts_ns: int) -> tuple[Workload | None, Workload | None]:
        """(source, destination) workload of one Ethernet frame at ``ts_ns``."""
        l4 = parse_l4(data)
        if l4 is None:
            return None, None
        return self.index.resolve(l4.src, ts_ns), self.index.resolve(l4.dst, ts_ns)

    def resolve(self, ip: str, ts_ns: int) -> Workload | None:
        packed = _packed(ip)
        return None if packed is None else self.index.resolve(packed, ts_ns)

    def comment(self, data: bytes | memoryview, ts_ns: int) -> bytes | None:
        """A pcapng ``opt_comment`` naming both ends, or None when neither is known."""
        src, dst = self.ends(data, ts_ns)
        if src is None and dst is None:
            return None
        return f"src={workload_label(src) or '-'} dst={workload_label(dst) or '-'}".encode()

    def call_names(self, src_ip: str, dst_ip: str, ts_ns: int) -> CallNames:
        """Values for ``Call.src_workload``/``src_namespace``/``dst_workload``/``dst_namespace``."""
        return CallNames(*_short(self.resolve(src_ip, ts_ns)), *_short(self.resolve(dst_ip, ts_ns)))


class WorkloadFilter:
    """``--namespace NS`` / ``--pod REGEX`` over packets, resolved at each packet's time."""

    def __init__(self, workloads: Workloads, *, namespaces: Sequence[str] = (),
                 pods: Sequence[str] = ()) -> None:
        self.workloads = workloads
        self.namespaces = frozenset(n for n in namespaces if n)
        self.pods: list[re.Pattern[str]] = []
        for text in pods:
            try:
                self.pods.append(re.compile(text))
            except re.error as exc:
                raise ConfigError(f"--pod {text!r} is not a valid regular expression: {exc}") from None
        # addresses that ever held a matching workload: most packets are rejected by one lookup
        self._candidates = workloads.index.addresses_where(self.matches)

    @property
    def empty(self) -> bool:
        return not (self.namespaces or self.pods)

    def matches(self, wl: Workload | None) -> bool:
        """Whether one end's workload satisfies the filter."""
        if wl is None:
            return False
        if self.pods and not (wl.kind == "pod" and any(p.search(wl.name) for p in self.pods)):
            return False
        return not (self.namespaces and not (wl.kind in ("pod", "service")
                                             and wl.namespace in self.namespaces))

    def match_ends(self, src: Workload | None, dst: Workload | None) -> bool:
        return self.empty or self.matches(src) or self.matches(dst)

    def match(self, data: bytes | memoryview, origlen: int | None = None, ts_ns: int = 0) -> bool:
        """One frame at ``ts_ns`` (``origlen`` is accepted for PacketFilter's signature)."""
        if self.empty:
            return True
        l4 = parse_l4(data)
        if l4 is None:
            return False
        cand, index = self._candidates, self.workloads.index
        return ((l4.src in cand and self.matches(index.resolve(l4.src, ts_ns)))
                or (l4.dst in cand and self.matches(index.resolve(l4.dst, ts_ns))))

    def match_ips(self, src_ip: str, dst_ip: str, ts_ns: int) -> bool:
        """For calls and flows: either address's workload at ``ts_ns`` matches."""
        if self.empty:
            return True
        return self.matches(self.workloads.resolve(src_ip, ts_ns)) or \
            self.matches(self.workloads.resolve(dst_ip, ts_ns))
