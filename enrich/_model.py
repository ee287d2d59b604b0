"""Kubernetes API objects -> the compact records of ``rawcap.k8s``, and the watcher's cache.

The API sends whole objects (a pod is kilobytes of spec and status); consumers need a handful
of fields, and most MODIFIED events (conditions, probes) change none of them. Converting here
and publishing only when the compact record changes keeps the compacted topic small and quiet.

Owner resolution follows what the controllers guarantee rather than watching more kinds: a
Deployment's ReplicaSet is named ``<deployment>-<pod-template-hash>`` and its pods carry the
``pod-template-hash`` label, so pod -> ReplicaSet -> Deployment needs no ReplicaSet lookup.
StatefulSet, DaemonSet and Job owners are taken as they are; a bare pod has no owner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from schemas.k8s import (
    EndpointSliceRecord,
    K8sRecord,
    NamespaceRecord,
    NodeRecord,
    PodRecord,
    ServiceRecord,
)

__all__ = ("KINDS", "Change", "ObjectCache", "owner_of", "parse_rfc3339", "to_record")

#: Resource kinds the watcher follows, in the order a fresh consumer wants them.
KINDS: tuple[str, ...] = ("namespace", "node", "service", "endpointslice", "pod")


def parse_rfc3339(text: str | None) -> int:
    """``2026-11-23T10:00:00Z`` (as the API writes times) -> ns; 0 for missing/unparsable."""
    if not text:
        return 0
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def owner_of(meta: dict[str, Any]) -> tuple[str, str]:
    """(owner kind, owner name) of a pod, following ReplicaSet -> Deployment."""
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is None:
        return "", ""
    kind, name = ref.get("kind", ""), ref.get("name", "")
    if kind == "ReplicaSet":
        pth = (meta.get("labels") or {}).get("pod-template-hash")
        if pth and name.endswith("-" + pth):
            return "Deployment", name[: -len(pth) - 1]
    return kind, name


def _container_ids(status: dict[str, Any]) -> tuple[str, ...]:
    ids = []
    for group in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(group) or ():
            cid = cs.get("containerID") or ""
            if cid:
                ids.append(cid.split("://", 1)[-1])
    return tuple(ids)


def _pod(obj: dict[str, Any]) -> PodRecord:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    ips = tuple(p["ip"] for p in status.get("podIPs") or () if p.get("ip"))
    if not ips and status.get("podIP"):
        ips = (status["podIP"],)
    kind, name = owner_of(meta)
    phase = status.get("phase") or ""
    end_ns = 0
    if phase in ("Succeeded", "Failed"):
        finished = [
            parse_rfc3339(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            for cs in status.get("containerStatuses") or ()
        ]
        end_ns = max(finished, default=0)
        if end_ns and end_ns % 1_000_000_000 == 0:
            # finishedAt has whole seconds: the container ended somewhere in that second (a
            # client pod's last requests came 40 ms after the mark on a real node), and the
            # sandbox holds the IP until after its containers end
            end_ns += 1_000_000_000
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    return PodRecord(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
        node=spec.get("nodeName") or "", ips=ips, host_network=bool(spec.get("hostNetwork")),
        phase=phase, owner_kind=kind, owner_name=name, containers=_container_ids(status),
        start_ns=parse_rfc3339(status.get("startTime")) or parse_rfc3339(meta.get("creationTimestamp")),
        end_ns=end_ns, labels=labels, rv=meta.get("resourceVersion", ""),
    )


def _service(obj: dict[str, Any]) -> ServiceRecord:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ips = tuple(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
    return ServiceRecord(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
        cluster_ips=tuple(ip for ip in ips if ip and ip != "None"), type=spec.get("type") or "ClusterIP",
        start_ns=parse_rfc3339(meta.get("creationTimestamp")), rv=meta.get("resourceVersion", ""),
    )


def _slice(obj: dict[str, Any]) -> EndpointSliceRecord:
    meta = obj.get("metadata") or {}
    endpoints = []
    for ep in obj.get("endpoints") or ():
        ref = ep.get("targetRef") or {}
        pod = ref.get("name", "") if ref.get("kind") == "Pod" else ""
        for addr in ep.get("addresses") or ():
            endpoints.append((addr, pod))
    return EndpointSliceRecord(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""),
        service=(meta.get("labels") or {}).get("kubernetes.io/service-name", ""),
        endpoints=tuple(sorted(endpoints)), rv=meta.get("resourceVersion", ""),
    )


def _namespace(obj: dict[str, Any]) -> NamespaceRecord:
    meta = obj.get("metadata") or {}
    return NamespaceRecord(name=meta.get("name", ""), uid=meta.get("uid", ""),
                           phase=(obj.get("status") or {}).get("phase", ""),
                           rv=meta.get("resourceVersion", ""))


def _node(obj: dict[str, Any]) -> NodeRecord:
    meta = obj.get("metadata") or {}
    addrs = (obj.get("status") or {}).get("addresses") or ()
    ips = tuple(sorted({a["address"] for a in addrs
                        if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")}))
    return NodeRecord(name=meta.get("name", ""), uid=meta.get("uid", ""), ips=ips,
                      rv=meta.get("resourceVersion", ""))


_CONVERT = {"pod": _pod, "service": _service, "endpointslice": _slice,
            "namespace": _namespace, "node": _node}


def to_record(kind: str, obj: dict[str, Any]) -> K8sRecord:
    """One API object (as JSON) of ``kind`` -> its compact record."""
    return _CONVERT[kind](obj)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """What the watcher hands on: ``record`` None means the object is gone (a tombstone)."""

    key: str
    record: K8sRecord | None
    ts_ns: int


def _same(a: K8sRecord, b: K8sRecord) -> bool:
    return dataclasses.replace(a, rv="") == dataclasses.replace(b, rv="")


class ObjectCache:
    """Newest record per key of one kind, so that the watcher emits only real changes and can
    turn a re-list into the deletes it missed (informer "replace" semantics)."""

    def __init__(self) -> None:
        self.records: dict[str, K8sRecord] = {}

    def upsert(self, record: K8sRecord, ts_ns: int) -> Change | None:
        old = self.records.get(record.key)
        self.records[record.key] = record
        if old is not None and _same(old, record):
            return None
        return Change(record.key, record, ts_ns)

    def delete(self, key: str, ts_ns: int) -> Change | None:
        if self.records.pop(key, None) is None:
            return None
        return Change(key, None, ts_ns)

    def replace(self, records: Iterable[K8sRecord], ts_ns: int) -> list[Change]:
        """A full list: changed or new objects, then deletes for the ones that vanished."""
        changes = []
        seen = set()
        for rec in records:
            seen.add(rec.key)
            ch = self.upsert(rec, ts_ns)
            if ch is not None:
                changes.append(ch)
        for key in [k for k in self.records if k not in seen]:
            del self.records[key]
            changes.append(Change(key, None, ts_ns))
        return changes

    def forget_unknown(self, keys: Iterable[str], ts_ns: int) -> list[Change]:
        """Tombstones for keys already on the topic that the API no longer has (the watcher
        was down while they were deleted)."""
        return [Change(k, None, ts_ns) for k in keys if k not in self.records]
