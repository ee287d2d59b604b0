"""``tap.regex`` / ``tap.namespaces`` / ``tap.excludedNamespaces`` -> one CaptureFilter per node.

The capture agent filters in the kernel by IP, so the pod selection of the values file has to
become, for each node, the IPs of that node's pods. Two shapes, chosen to keep the node's own
traffic visible whenever the values do not ask to narrow:

- only exclusions (``tap.regex`` matches everything and ``tap.namespaces`` is empty): capture
  everything except the IPs of pods in excluded namespaces (``deny_ips``);
- a regex or a namespace list: capture only the IPs of matching pods (``allow_ips``). A node
  without any matching pod gets :data:`CAPTURE_NOTHING`, because an empty allow set means
  "everything" on the wire.

hostNetwork pods share the node's IP; selecting or excluding them would select or exclude the
whole node, so they are left out of both sets.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.control import CaptureFilter, filter_key
from schemas.k8s import TERMINAL_PHASES, PodRecord

__all__ = ("CAPTURE_NOTHING", "FilterPlanner", "Selection", "compute_filters")

#: An allow set no TCP/UDP packet matches (the unspecified IPv6 address is never a valid
#: endpoint): "capture nothing on this node" in a format whose empty allow set means "all".
CAPTURE_NOTHING: tuple[str, ...] = ("::/128",)
_MATCH_ALL = (".*", "", "^.*$", ".*$", "^.*")


@dataclass(frozen=True, slots=True)
class Selection:
    regex: str = ".*"
    namespaces: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()

    @property
    def narrows(self) -> bool:
        return self.regex not in _MATCH_ALL or bool(self.namespaces)

    @property
    def trivial(self) -> bool:
        return not self.narrows and not self.excluded

    def matches(self, pod: PodRecord) -> bool:
        if pod.namespace in self.excluded:
            return False
        if self.namespaces and pod.namespace not in self.namespaces:
            return False
        return re.search(self.regex, pod.name) is not None


def _ip_net(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def compute_filters(
    pods: Iterable[PodRecord], nodes: Iterable[str], sel: Selection
) -> dict[str, CaptureFilter]:
    """Filter records by key (``filter/<node>``, ``filter/*``), version 0 (the planner stamps)."""
    if sel.trivial:
        everything = CaptureFilter()
        return {filter_key("*"): everything, **{filter_key(n): everything for n in nodes}}
    allow: dict[str, set[str]] = {n: set() for n in nodes}
    deny: dict[str, set[str]] = {n: set() for n in nodes}
    for pod in pods:
        if pod.host_network or not pod.ips or not pod.node or pod.phase in TERMINAL_PHASES:
            continue
        target = allow if sel.matches(pod) else deny
        target.setdefault(pod.node, set()).update(_ip_net(ip) for ip in pod.ips)
        (deny if target is allow else allow).setdefault(pod.node, set())
    out: dict[str, CaptureFilter] = {}
    if sel.narrows:
        out[filter_key("*")] = CaptureFilter(allow_ips=CAPTURE_NOTHING)
        for node, ips in allow.items():
            out[filter_key(node)] = CaptureFilter(allow_ips=tuple(sorted(ips)) or CAPTURE_NOTHING)
    else:
        out[filter_key("*")] = CaptureFilter()
        for node, ips in deny.items():
            out[filter_key(node)] = CaptureFilter(deny_ips=tuple(sorted(ips)))
    return out


class FilterPlanner:
    """Remembers what was published and returns only the records that changed, each with a
    version that keeps increasing across restarts (milliseconds, bumped past the last)."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.published: dict[str, CaptureFilter] = {}
        self._version = 0

    def _next_version(self) -> int:
        self._version = max(self._version + 1, time.time_ns() // 1_000_000)
        return self._version

    def seed(self, key: str, current: CaptureFilter) -> None:
        """What the topic already holds (read back at start), so an unchanged filter is not
        republished and versions continue past it."""
        self.published[key] = current
        self._version = max(self._version, current.version)

    def plan(self, pods: Iterable[PodRecord], nodes: Iterable[str]) -> dict[str, CaptureFilter]:
        wanted = compute_filters(pods, nodes, self.selection)
        for key in self.published:  # a node record left from other values must not linger
            wanted.setdefault(key, wanted[filter_key("*")])
        changed: dict[str, CaptureFilter] = {}
        for key, f in wanted.items():
            old = self.published.get(key)
            if old is not None and _same(old, f):
                continue
            f = CaptureFilter(f.allow_ips, f.deny_ips, f.allow_ports, f.deny_ports, f.protocols,
                              self._next_version())
            self.published[key] = f
            changed[key] = f
        return changed


def _same(a: CaptureFilter, b: CaptureFilter) -> bool:
    return (a.allow_ips, a.deny_ips, a.allow_ports, a.deny_ports, a.protocols) == \
        (b.allow_ips, b.deny_ips, b.allow_ports, b.deny_ports, b.protocols)
