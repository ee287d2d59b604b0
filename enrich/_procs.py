"""Process context from ``rawcap.procs``: which process owned a flow's socket at some time.

The capture agent reports on the syscall side (``schemas.procs``), one observation per
record, of four kinds; each answers a different question about a flow end:

- ``tcp`` (outgoing connection established, full 5-tuple): the process behind
  ``(saddr, sport)``; addresses are cluster-unique, so this holds whatever node saw the flow.
- ``listen`` (local address, often the wildcard, and port): the server process of flows to
  that port on that node. Pods on one node may all listen on ``0.0.0.0:80``, so when several
  candidates fit, the one whose ``pod_uid`` is the destination pod wins.
- ``connect`` / ``udp`` with no source port: the client process of flows from that node to
  ``(daddr, dport)``; with a source port, like ``tcp``.

A flow end is matched to the newest fitting report at or before its first packet, with
:data:`SLACK_NS` of clock slack (the tracepoint fires around the SYN, not necessarily before
the capture saw it).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from schemas.flows import ProcessInfo
from schemas.k8s import pack_ip
from schemas.procs import ProcRecord, decode_proc

__all__ = ("SLACK_NS", "ProcIndex")

SLACK_NS = 2_000_000_000
_WILDCARD = (b"\0" * 4, b"\0" * 16)


class _Timeline:
    __slots__ = ("infos", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.infos: list[tuple[ProcessInfo, str]] = []  # (process, pod uid)

    def add(self, ts: int, info: ProcessInfo, pod_uid: str) -> None:
        i = bisect.bisect_right(self.times, ts)
        self.times.insert(i, ts)
        self.infos.insert(i, (info, pod_uid))

    def at(self, ts: int) -> tuple[ProcessInfo, str] | None:
        i = bisect.bisect_right(self.times, ts + SLACK_NS)
        return self.infos[i - 1] if i else None

    def prune(self, before: int) -> bool:
        """Drop reports older than ``before`` except the newest one; True if now empty."""
        i = bisect.bisect_left(self.times, before)
        if i > 1:
            del self.times[:i - 1], self.infos[:i - 1]
        return not self.times


class ProcIndex:
    """Socket -> process timelines; sans-I/O."""

    def __init__(self) -> None:
        self._sock: dict[tuple[bytes, int], _Timeline] = {}
        self._listen: dict[tuple[str, int], dict[tuple[bytes, str], _Timeline]] = {}
        self._dest: dict[tuple[str, bytes, int], _Timeline] = {}
        self.records = 0
        self.bad = 0

    def add(self, ts_ns: int, ip: bytes, port: int, info: ProcessInfo, pod_uid: str = "") -> None:
        """The process behind socket ``(ip, port)`` from ``ts_ns`` on."""
        self._sock.setdefault((ip, port), _Timeline()).add(ts_ns, info, pod_uid)
        self.records += 1

    def apply(self, rec: ProcRecord) -> None:
        info = ProcessInfo(rec.pid, rec.comm, rec.container_id, rec.cgroup_id)
        src = pack_ip(rec.saddr) if rec.saddr else None
        if rec.kind == "listen":
            if rec.sport:
                addr = src if src is not None else b""
                by_addr = self._listen.setdefault((rec.node, rec.sport), {})
                by_addr.setdefault((addr, rec.pod_uid), _Timeline()).add(rec.ts_ns, info, rec.pod_uid)
                self.records += 1
            return
        if src is not None and rec.sport and src not in _WILDCARD:
            self.add(rec.ts_ns, src, rec.sport, info, rec.pod_uid)
        elif rec.daddr and rec.dport:
            key = (rec.node, pack_ip(rec.daddr), rec.dport)
            self._dest.setdefault(key, _Timeline()).add(rec.ts_ns, info, rec.pod_uid)
            self.records += 1

    def apply_value(self, value: bytes, ts_ns: int = 0) -> None:
        """One ``rawcap.procs`` value; a malformed one is counted and skipped."""
        try:
            rec = decode_proc(value)
        except ValueError:
            self.bad += 1
            return
        self.apply(rec)

    def lookup(self, node: str, a: bytes, ap: int, b: bytes, bp: int, ts_ns: int,
               pod_uid_of: Callable[[bytes, int], str] | None = None,
               ) -> tuple[ProcessInfo | None, ProcessInfo | None]:
        """(source process, destination process) of a flow first seen at ``ts_ns`` on ``node``."""
        if not self.records:
            return None, None
        src = self._sock_at(a, ap, ts_ns)
        if src is None:
            tl = self._dest.get((node, b, bp))
            hit = tl.at(ts_ns) if tl is not None else None
            src = hit[0] if hit else None
        dst = self._sock_at(b, bp, ts_ns)
        if dst is None:
            dst = self._listener(node, b, bp, ts_ns, pod_uid_of)
        return src, dst

    def _sock_at(self, ip: bytes, port: int, ts: int) -> ProcessInfo | None:
        tl = self._sock.get((ip, port))
        hit = tl.at(ts) if tl is not None else None
        return hit[0] if hit else None

    def _listener(self, node: str, ip: bytes, port: int, ts: int,
                  pod_uid_of: Callable[[bytes, int], str] | None) -> ProcessInfo | None:
        by_addr = self._listen.get((node, port))
        if not by_addr:
            return None
        exact = [h for (addr, _uid), tl in by_addr.items() if addr == ip if (h := tl.at(ts)) is not None]
        if exact:
            return exact[-1][0]
        candidates = [h for (addr, _uid), tl in by_addr.items() if addr in (b"", *_WILDCARD)
                      if (h := tl.at(ts)) is not None]
        if len(candidates) > 1 and pod_uid_of is not None:
            uid = pod_uid_of(ip, ts)
            mine = [c for c in candidates if uid and c[1] == uid]
            if mine:
                return mine[0][0]
            return None  # ambiguous: several pods listen on this port, none is known to be it
        return candidates[0][0] if candidates else None

    def prune(self, before_ns: int) -> None:
        for table in (self._sock, self._dest):
            for key in [k for k, tl in table.items() if tl.prune(before_ns)]:
                del table[key]  # type: ignore[arg-type]
        for by_addr in self._listen.values():
            for tl in by_addr.values():
                tl.prune(before_ns)
