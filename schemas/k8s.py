"""Records on ``rawcap.k8s`` (compacted) and the workload index every consumer builds from them.

``rawcap k8s-watch`` turns the Kubernetes API objects it watches into small change records,
one Kafka key per object (``pod/<ns>/<name>``, ``service/<ns>/<name>``,
``endpointslice/<ns>/<name>``, ``namespace/<name>``, ``node/<name>``) so that compaction
keeps the newest state of each object; a delete is a tombstone (null value) whose Kafka
timestamp says when the object went away. Values are msgpack maps with ``"v": 1``; a reader
rejects another major version with :class:`UnsupportedRecord`.

:class:`WorkloadIndex` is the reader side, sans-I/O: feed it ``(key, value, ts_ns)`` in topic
order and ask ``resolve(ip, ts_ns)``. Pod IPs are reused, so every IP holds a timeline of
validity intervals and a lookup answers "who had this IP *at that time*", not "who has it
now". It lives here rather than in ``enrich`` so that forensics and the dissector can attach
the same workload names without importing another service.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .errors import RawcapError

__all__ = (
    "K8S_VERSION",
    "EndpointSliceRecord",
    "K8sRecord",
    "NamespaceRecord",
    "NodeRecord",
    "PodRecord",
    "ServiceRecord",
    "UnsupportedRecord",
    "Workload",
    "WorkloadIndex",
    "decode_k8s",
    "encode_k8s",
    "pack_ip",
    "record_key",
)

K8S_VERSION: Final = 1
_OPEN: Final = 1 << 63  # end of an interval that has not ended
TERMINAL_PHASES: Final = frozenset(("Succeeded", "Failed"))


class UnsupportedRecord(RawcapError):
    """A ``rawcap.k8s`` value this reader cannot decode (unknown version or kind, bad shape)."""


@dataclass(frozen=True, slots=True)
class PodRecord:
    namespace: str
    name: str
    uid: str
    node: str = ""
    ips: tuple[str, ...] = ()
    host_network: bool = False
    phase: str = ""
    owner_kind: str = ""
    owner_name: str = ""
    containers: tuple[str, ...] = ()  # container ids without the runtime prefix
    start_ns: int = 0  # status.startTime (creationTimestamp if absent)
    end_ns: int = 0  # when the pod stopped holding its IP (terminal phase), 0 while running
    labels: tuple[tuple[str, str], ...] = ()
    rv: str = ""
    kind: str = "pod"

    @property
    def key(self) -> str:
        return f"pod/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    namespace: str
    name: str
    uid: str
    cluster_ips: tuple[str, ...] = ()
    type: str = "ClusterIP"
    start_ns: int = 0
    rv: str = ""
    kind: str = "service"

    @property
    def key(self) -> str:
        return f"service/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class EndpointSliceRecord:
    namespace: str
    name: str
    service: str
    endpoints: tuple[tuple[str, str], ...] = ()  # (ip, pod name); pod name "" if not a pod
    rv: str = ""
    kind: str = "endpointslice"

    @property
    def key(self) -> str:
        return f"endpointslice/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    name: str
    uid: str = ""
    phase: str = ""
    rv: str = ""
    kind: str = "namespace"

    @property
    def key(self) -> str:
        return f"namespace/{self.name}"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    uid: str = ""
    ips: tuple[str, ...] = ()
    rv: str = ""
    kind: str = "node"

    @property
    def key(self) -> str:
        return f"node/{self.name}"


K8sRecord = PodRecord | ServiceRecord | EndpointSliceRecord | NamespaceRecord | NodeRecord
_TYPES: Final[dict[str, type]] = {
    "pod": PodRecord,
    "service": ServiceRecord,
    "endpointslice": EndpointSliceRecord,
    "namespace": NamespaceRecord,
    "node": NodeRecord,
}
_TUPLE_FIELDS: Final = frozenset(("ips", "containers", "cluster_ips"))


def record_key(record: K8sRecord) -> str:
    return record.key


def encode_k8s(record: K8sRecord) -> bytes:
    """The value of ``record`` on ``rawcap.k8s`` (its key is ``record.key``)."""
    doc: dict[str, Any] = {"v": K8S_VERSION}
    for name in record.__slots__:
        value = getattr(record, name)
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        doc[name] = value
    return msgpack.packb(doc, use_bin_type=True)


def decode_k8s(value: bytes) -> K8sRecord:
    """Decode a non-null ``rawcap.k8s`` value; tombstones (None) are the caller's business."""
    try:
        doc = msgpack.unpackb(value, raw=False)
    except Exception as exc:
        raise UnsupportedRecord(f"rawcap.k8s value is not msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise UnsupportedRecord("rawcap.k8s value is not a map")
    if doc.get("v") != K8S_VERSION:
        raise UnsupportedRecord(f"rawcap.k8s record version {doc.get('v')!r} is not supported")
    cls = _TYPES.get(doc.get("kind", ""))
    if cls is None:
        raise UnsupportedRecord(f"rawcap.k8s record kind {doc.get('kind')!r} is unknown")
    kwargs: dict[str, Any] = {}
    for name in cls.__slots__:  # type: ignore[attr-defined]
        if name not in doc:
            continue
        value = doc[name]
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UnsupportedRecord(f"rawcap.k8s {cls.__name__} is malformed: {exc}") from None


def pack_ip(text: str) -> bytes:
    """``10.0.0.1`` -> 4 bytes, ``fd00::1`` -> 16 bytes (the form ``rawcap.packet`` uses)."""
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


@dataclass(frozen=True, slots=True)
class Workload:
    """Who an IP belonged to at some time; ``kind`` is pod, service or node."""

    kind: str
    name: str
    namespace: str = ""
    node: str = ""
    service: str = ""
    owner_kind: str = ""
    owner_name: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind, "name": self.name, "namespace": self.namespace, "node": self.node,
            "service": self.service, "owner_kind": self.owner_kind, "owner_name": self.owner_name,
        }


class _Span:
    """One validity interval of one IP: [start, end) owned by ``uid``; ``joined`` caches the
    workload with its services for EndpointSlice generation ``gen``."""

    __slots__ = ("end", "gen", "joined", "start", "uid", "workload")

    def __init__(self, start: int, uid: str, workload: Workload) -> None:
        self.start = start
        self.end = _OPEN
        self.uid = uid
        self.workload = workload
        self.joined = workload
        self.gen = -1


class WorkloadIndex:
    """IP -> workload timelines built from ``rawcap.k8s`` records; sans-I/O.

    ``ts_ns`` passed to :meth:`apply` is when the change was observed (the Kafka timestamp);
    records carry their own start/end times when the API says them (pod ``startTime``, a
    terminal phase), which are preferred so that a watcher started late, or a consumer
    replaying the topic, still dates intervals correctly. When an IP is handed to a new owner
    while the old one still holds it (the delete arrived late), the old interval ends where the
    new one starts.
    """

    def __init__(self) -> None:
        self._ips: dict[bytes, list[_Span]] = {}
        self._pods: dict[str, PodRecord] = {}  # key -> newest record
        self._pod_spans: dict[str, list[tuple[bytes, _Span]]] = {}  # uid -> its spans
        self._services: dict[str, ServiceRecord] = {}
        self._slices: dict[str, EndpointSliceRecord] = {}
        self._pod_services: dict[tuple[str, str], tuple[str, ...]] = {}  # (ns, pod) -> services
        self._nodes: dict[str, NodeRecord] = {}
        self._namespaces: dict[str, NamespaceRecord] = {}
        self._strings: dict[str, str] = {}
        self._gen = 0  # bumped on every EndpointSlice change (invalidates _Span.joined)

    # -- feeding --------------------------------------------------------------------------
    def apply_value(self, key: str, value: bytes | None, ts_ns: int) -> None:
        """Apply one raw topic record (``value`` None is a tombstone)."""
        self.apply(key, None if value is None else decode_k8s(value), ts_ns)

    def apply(self, key: str, record: K8sRecord | None, ts_ns: int) -> None:
        kind = key.split("/", 1)[0]
        if kind == "pod":
            self._apply_pod(key, record, ts_ns)  # type: ignore[arg-type]
        elif kind == "service":
            self._apply_service(key, record, ts_ns)  # type: ignore[arg-type]
        elif kind == "endpointslice":
            self._apply_slice(key, record)  # type: ignore[arg-type]
        elif kind == "node":
            self._apply_node(key, record, ts_ns)  # type: ignore[arg-type]
        elif kind == "namespace":
            if record is None:
                self._namespaces.pop(key, None)
            else:
                self._namespaces[key] = record  # type: ignore[assignment]

    def _s(self, text: str) -> str:
        return self._strings.setdefault(text, text)

    def _open(self, ip: bytes, start: int, uid: str, workload: Workload) -> _Span:
        spans = self._ips.setdefault(ip, [])
        for span in spans:
            if span.uid == uid:
                continue
            if span.end == _OPEN:  # the old owner's delete is late: it ends where we start
                start = max(start, span.start)
                span.end = start
            else:  # an IP is handed on only once released; startTime predates IP allocation
                start = max(start, span.end)
        span = _Span(start, uid, workload)
        spans.append(span)
        spans.sort(key=lambda s: s.start)
        return span

    def _add_closed(self, ip: bytes, start: int, end: int, uid: str, workload: Workload) -> None:
        """A finished interval learnt after the fact; it never shortens another owner's."""
        spans = self._ips.setdefault(ip, [])
        for span in spans:  # sorted by start
            if span.uid == uid:
                continue
            if span.start <= start < span.end:
                start = span.end
            elif start < span.start < end:
                end = span.start
        if start < end:
            span = _Span(start, uid, workload)
            span.end = end
            spans.append(span)
            spans.sort(key=lambda s: s.start)
        elif not spans:
            del self._ips[ip]

    def _workload(self, rec: PodRecord) -> Workload:
        # pod names are unique: shared with the record, not interned; the rest repeats
        return Workload("pod", rec.name, self._s(rec.namespace), self._s(rec.node), "",
                        self._s(rec.owner_kind), self._s(rec.owner_name))

    def _close_uid(self, uid: str, end: int) -> None:
        for _ip, span in self._pod_spans.pop(uid, ()):
            if span.end == _OPEN:
                span.end = max(span.start, end)

    def _apply_pod(self, key: str, rec: PodRecord | None, ts_ns: int) -> None:
        old = self._pods.get(key)
        if rec is None:
            if old is not None:
                self._close_uid(old.uid or key, ts_ns)
                del self._pods[key]
            return
        if not rec.uid:  # uids identify a pod across name reuse; fall back to the key
            rec = PodRecord(**{**{n: getattr(rec, n) for n in rec.__slots__}, "uid": key})
        if old is not None and old.uid != rec.uid:
            self._close_uid(old.uid, rec.start_ns or ts_ns)
        self._pods[key] = rec
        if rec.phase in TERMINAL_PHASES:
            if (old is None or old.uid != rec.uid or not old.ips) and rec.start_ns and rec.end_ns \
                    and not rec.host_network:
                # first seen already finished (a compacted topic replayed, a late watcher), or
                # first seen with its IPs when finished (a pod that ran for a second or two:
                # the kubelet may report Pending, then Succeeded with the IP, nothing between):
                # it held its IPs from start to end, within whatever gaps other owners leave
                wl = self._workload(rec)
                for text in rec.ips:
                    self._add_closed(pack_ip(text), rec.start_ns, rec.end_ns, rec.uid, wl)
            self._close_uid(rec.uid, rec.end_ns or ts_ns)
            return
        if rec.host_network:
            return
        current = self._pod_spans.get(rec.uid, [])
        wanted = {pack_ip(ip) for ip in rec.ips}
        keep = []
        for ip, span in current:
            if ip in wanted and span.end == _OPEN:
                keep.append((ip, span))
                wanted.discard(ip)
            elif span.end == _OPEN:
                span.end = max(span.start, ts_ns)
        if wanted:
            wl = self._workload(rec)
            start = rec.start_ns or ts_ns
            if keep or current:  # an IP added later than the pod started: from now on
                start = ts_ns
            for ip in wanted:
                keep.append((ip, self._open(ip, start, rec.uid, wl)))
        self._pod_spans[rec.uid] = keep

    def _apply_service(self, key: str, rec: ServiceRecord | None, ts_ns: int) -> None:
        old = self._services.get(key)
        if old is not None:
            if rec is not None and rec.uid == old.uid and rec.cluster_ips == old.cluster_ips:
                self._services[key] = rec
                return
            self._close_uid(old.uid, ts_ns)
            del self._services[key]
        if rec is None:
            return
        self._services[key] = rec
        wl = Workload("service", self._s(rec.name), self._s(rec.namespace), "", self._s(rec.name))
        spans = []
        for ip in rec.cluster_ips:
            if ip and ip != "None":
                packed = pack_ip(ip)
                start = ts_ns if old is not None else (rec.start_ns or ts_ns)
                spans.append((packed, self._open(packed, start, rec.uid, wl)))
        self._pod_spans[rec.uid] = spans

    def _apply_slice(self, key: str, rec: EndpointSliceRecord | None) -> None:
        # (ns, pod) -> a sorted tuple of service names: one small tuple per pod, not a set
        self._gen += 1
        members = self._pod_services
        old = self._slices.pop(key, None)
        if old is not None:
            for _ip, pod in old.endpoints:
                had = members.get((old.namespace, pod))
                if had is not None:
                    left = tuple(s for s in had if s != old.service)
                    if left:
                        members[(old.namespace, pod)] = left
                    else:
                        del members[(old.namespace, pod)]
        if rec is None:
            return
        self._slices[key] = rec
        service = self._s(rec.service)
        for _ip, pod in rec.endpoints:
            if pod:
                had = members.get((rec.namespace, pod), ())
                if service not in had:
                    members[(rec.namespace, pod)] = tuple(sorted((*had, service)))

    def _apply_node(self, key: str, rec: NodeRecord | None, ts_ns: int) -> None:
        old = self._nodes.pop(key, None)
        uid = f"node:{key}"
        if old is not None:
            self._close_uid(uid, ts_ns)
        if rec is None:
            return
        self._nodes[key] = rec
        wl = Workload("node", self._s(rec.name), "", self._s(rec.name))
        spans = []
        for ip in rec.ips:
            packed = pack_ip(ip)
            spans.append((packed, self._open(packed, 0 if old is None else ts_ns, uid, wl)))
        self._pod_spans[uid] = spans

    # -- reading --------------------------------------------------------------------------
    def resolve(self, ip: bytes, ts_ns: int) -> Workload | None:
        """The workload that held packed address ``ip`` at ``ts_ns``, or None."""
        spans = self._ips.get(ip)
        if not spans:
            return None
        for span in reversed(spans):
            if span.start <= ts_ns < span.end:
                wl = span.workload
                if wl.kind != "pod":
                    return wl
                if span.gen != self._gen:
                    services = self._pod_services.get((wl.namespace, wl.name))
                    span.joined = wl if not services else Workload(
                        wl.kind, wl.name, wl.namespace, wl.node, ",".join(services),
                        wl.owner_kind, wl.owner_name)
                    span.gen = self._gen
                return span.joined
        return None

    def resolve_span(self, ip: bytes, ts_ns: int) -> tuple[Workload | None, int, int]:
        """:meth:`resolve` and the times ``[lo, hi)`` around ``ts_ns`` for which it gives the
        same answer, as long as the index is not changed (callers cache lookups with it)."""
        found = self.resolve(ip, ts_ns)
        lo, hi = -_OPEN, _OPEN
        spans = self._ips.get(ip) or []
        k = len(spans)
        if found is not None:  # the last span holding ts_ns, and only later spans can cut it
            k = max(i for i, s in enumerate(spans) if s.start <= ts_ns < s.end)
            lo, hi = spans[k].start, spans[k].end
        for s in spans[k + 1:] if found is not None else spans:
            if s.end <= ts_ns:
                lo = max(lo, s.end)
            elif s.start > ts_ns:
                hi = min(hi, s.start)
        return found, lo, hi

    def prune(self, before_ns: int) -> int:
        """Forget intervals that ended before ``before_ns``; returns how many were dropped."""
        dropped = 0
        for ip in list(self._ips):
            spans = self._ips[ip]
            kept = [s for s in spans if s.end >= before_ns]
            dropped += len(spans) - len(kept)
            if kept:
                self._ips[ip] = kept
            else:
                del self._ips[ip]
        return dropped

    def addresses_where(self, pred: Callable[[Workload], bool]) -> set[bytes]:
        """Packed addresses that held a workload matching ``pred`` at some time (a cheap
        pre-filter before resolving per packet; pod workloads here carry no ``service``)."""
        return {ip for ip, spans in self._ips.items() if any(pred(s.workload) for s in spans)}

    def pods(self) -> Iterator[PodRecord]:
        return iter(self._pods.values())

    def pod(self, namespace: str, name: str) -> PodRecord | None:
        return self._pods.get(f"pod/{namespace}/{name}")

    def nodes(self) -> list[str]:
        return sorted(r.name for r in self._nodes.values())

    def stats(self) -> dict[str, int]:
        return {"pods": len(self._pods), "services": len(self._services), "slices": len(self._slices),
                "nodes": len(self._nodes), "namespaces": len(self._namespaces), "ips": len(self._ips)}
