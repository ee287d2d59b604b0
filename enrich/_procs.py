"""Process context from ``rawcap.procs``: which process owned a socket at some time.

The capture agent's eBPF programs report, per socket event, the local and remote address
and port with pid, comm, cgroup id and container id. A flow end ``(ip, port)`` is matched to
the newest report for that socket at or before the flow's first packet (small clock slack
allowed: the tracepoint fires around the SYN, not necessarily before it is captured).

The record layout is the capture issue's ``schemas.procs``; until it is importable this
reader accepts the msgpack maps by field name (``ts_ns``, ``pid``, ``comm``, ``cgroup_id``,
``container_id``, ``proto``, ``saddr``/``src``, ``sport``, ``daddr``/``dst``, ``dport``).
"""

from __future__ import annotations

import bisect
from typing import Any

import msgpack

from schemas.flows import ProcessInfo
from schemas.k8s import pack_ip

__all__ = ("ProcIndex",)

_SLACK_NS = 2_000_000_000


def _get(doc: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in doc and doc[n] is not None:
            return doc[n]
    return default


def _ip(value: Any) -> bytes | None:
    if isinstance(value, bytes) and len(value) in (4, 16):
        return value
    if isinstance(value, str) and value:
        try:
            return pack_ip(value)
        except OSError:
            return None
    return None


class ProcIndex:
    """(ip, port) -> time-ordered process reports; sans-I/O."""

    def __init__(self) -> None:
        self._by_sock: dict[tuple[bytes, int], tuple[list[int], list[ProcessInfo]]] = {}
        self.records = 0

    def add(self, ts_ns: int, ip: bytes, port: int, info: ProcessInfo) -> None:
        times, infos = self._by_sock.setdefault((ip, port), ([], []))
        i = bisect.bisect_right(times, ts_ns)
        times.insert(i, ts_ns)
        infos.insert(i, info)
        self.records += 1

    def apply_value(self, value: bytes, ts_ns: int) -> None:
        try:
            from schemas import procs as _schema  # type: ignore[attr-defined]
        except ImportError:
            _schema = None
        doc: Any
        if _schema is not None and hasattr(_schema, "decode_proc"):
            doc = _schema.decode_proc(value)
            doc = doc if isinstance(doc, dict) else {s: getattr(doc, s) for s in getattr(doc, "__slots__", ())}
        else:
            doc = msgpack.unpackb(value, raw=False)
        if not isinstance(doc, dict):
            return
        ts = int(_get(doc, "ts_ns", default=ts_ns))
        info = ProcessInfo(int(_get(doc, "pid", default=0)), str(_get(doc, "comm", default="")),
                           str(_get(doc, "container_id", "container", default="")),
                           int(_get(doc, "cgroup_id", "cgroup", default=0)))
        src = _ip(_get(doc, "saddr", "src", "src_ip", "local_ip"))
        sport = int(_get(doc, "sport", "src_port", "local_port", default=0))
        if src is not None and sport:
            self.add(ts, src, sport, info)

    def find(self, ip: bytes, port: int, ts_ns: int) -> ProcessInfo | None:
        entry = self._by_sock.get((ip, port))
        if entry is None:
            return None
        times, infos = entry
        i = bisect.bisect_right(times, ts_ns + _SLACK_NS)
        return infos[i - 1] if i else None

    def lookup(self, proto: str, a: bytes, ap: int, b: bytes, bp: int,
               ts_ns: int) -> tuple[ProcessInfo | None, ProcessInfo | None]:
        if not self._by_sock:
            return None, None
        return self.find(a, ap, ts_ns), self.find(b, bp, ts_ns)

    def prune(self, before_ns: int) -> None:
        for key in list(self._by_sock):
            times, infos = self._by_sock[key]
            i = bisect.bisect_left(times, before_ns)
            if i >= len(times):
                del self._by_sock[key]
            elif i:
                del times[:i - 1], infos[:i - 1]  # keep the newest one before the cut
