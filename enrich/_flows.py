"""Packets -> flow records per interval; sans-I/O (no Kafka, no clock).

A flow is the bidirectional 5-tuple on one node; time is cut into fixed intervals
(``enrich.flowInterval``) aligned on multiples of the interval, and each (flow, interval)
becomes one record, so a long connection reports every interval and a short one once. The
caller says how far packet time has advanced (:meth:`FlowTable.expire` with a watermark):
packets of one node arrive in order, so an interval that ended before the newest packet is
complete. Memory is bounded: past ``max_flows`` the oldest interval is emitted early.

Each flow remembers a caller-supplied ``tag`` (the Kafka offset of its first packet) so that
the consumer can commit only offsets whose flows have all been published.
"""

from __future__ import annotations

from collections.abc import Iterator

from rawcap.packet import IPPROTO_TCP, L4

__all__ = ("SYN", "Flow", "FlowTable")

SYN, ACK = 0x02, 0x10


class Flow:
    """Counters of one flow in one interval; ``a`` is the flow's source side."""

    __slots__ = ("a", "ap", "b", "bp", "bucket", "bytes_fwd", "bytes_rev", "family", "first_ns",
                 "flags_fwd", "flags_rev", "last_ns", "node", "packets_fwd", "packets_rev",
                 "proto", "tag")

    def __init__(self, node: str, proto: int, family: int, a: bytes, ap: int, b: bytes, bp: int,
                 bucket: int, ts: int, tag: int) -> None:
        self.node = node
        self.proto = proto
        self.family = family
        self.a, self.ap, self.b, self.bp = a, ap, b, bp
        self.bucket = bucket
        self.first_ns = self.last_ns = ts
        self.packets_fwd = self.bytes_fwd = self.packets_rev = self.bytes_rev = 0
        self.flags_fwd = self.flags_rev = 0
        self.tag = tag


class FlowTable:
    """Flows of one node; feed packets in time order, collect finished intervals."""

    def __init__(self, node: str, interval_ns: int, *, max_flows: int = 200_000) -> None:
        if interval_ns <= 0:
            raise ValueError("interval_ns must be positive")
        self.node = node
        self.interval = interval_ns
        self.max_flows = max_flows
        self._flows: dict[tuple[int, bytes, int, bytes, int], Flow] = {}
        self._done: list[Flow] = []
        self.watermark = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._flows)

    def add(self, ts_ns: int, l4: L4, wirelen: int, tag: int = 0) -> None:
        self.add_fields(ts_ns, l4.proto, l4.family, l4.src, l4.sport, l4.dst, l4.dport, l4.flags,
                        wirelen, tag)

    def add_fields(self, ts_ns: int, proto: int, family: int, src: bytes, sport: int, dst: bytes,
                   dport: int, flags: int, wirelen: int, tag: int = 0) -> None:
        """One packet, given its L4 fields (the hot path: no ``L4`` tuple needed)."""
        if (src, sport) <= (dst, dport):
            key = (proto, src, sport, dst, dport)
        else:
            key = (proto, dst, dport, src, sport)
        bucket = ts_ns // self.interval
        flow = self._flows.get(key)
        if flow is not None and flow.bucket != bucket:
            if bucket > flow.bucket:  # the previous interval of this flow is complete
                self._done.append(flow)
                flow = self._continue(key, flow, bucket, ts_ns, tag)
            else:  # a late packet for an interval already emitted: count it in the current
                bucket = flow.bucket
        if flow is None:
            if len(self._flows) >= self.max_flows:
                self._evict()
            a, ap, b, bp = src, sport, dst, dport
            if proto == IPPROTO_TCP and flags & (SYN | ACK) == SYN | ACK:
                a, ap, b, bp = dst, dport, src, sport  # a SYN-ACK answers the flow's source
            flow = Flow(self.node, proto, family, a, ap, b, bp, bucket, ts_ns, tag)
            self._flows[key] = flow
        if ts_ns > flow.last_ns:
            flow.last_ns = ts_ns
        elif ts_ns < flow.first_ns:
            flow.first_ns = ts_ns
        if sport == flow.ap and src == flow.a:
            flow.packets_fwd += 1
            flow.bytes_fwd += wirelen
            flow.flags_fwd |= flags
        else:
            flow.packets_rev += 1
            flow.bytes_rev += wirelen
            flow.flags_rev |= flags
        if ts_ns > self.watermark:
            self.watermark = ts_ns

    def _continue(self, key: tuple[int, bytes, int, bytes, int], old: Flow, bucket: int,
                  ts: int, tag: int) -> Flow:
        flow = Flow(self.node, old.proto, old.family, old.a, old.ap, old.b, old.bp, bucket, ts, tag)
        self._flows[key] = flow
        return flow

    def _evict(self) -> None:
        oldest = min(self._flows.items(), key=lambda kv: kv[1].last_ns)
        del self._flows[oldest[0]]
        self._done.append(oldest[1])
        self.evicted += 1

    def expire(self, watermark_ns: int | None = None) -> list[Flow]:
        """Flows whose interval ended at or before ``watermark_ns`` (default: the newest packet
        time seen), plus intervals superseded or evicted since the last call."""
        wm = self.watermark if watermark_ns is None else watermark_ns
        limit = wm // self.interval  # buckets below this have ended
        out, self._done = self._done, []
        for key in [k for k, f in self._flows.items() if f.bucket < limit]:
            out.append(self._flows.pop(key))
        return out

    def flush(self) -> list[Flow]:
        """Everything, finished or not (shutdown)."""
        out, self._done = self._done + list(self._flows.values()), []
        self._flows.clear()
        return out

    def min_tag(self) -> int | None:
        tags = [f.tag for f in self._flows.values()] + [f.tag for f in self._done]
        return min(tags) if tags else None

    def __iter__(self) -> Iterator[Flow]:
        return iter(self._flows.values())
