"""TCP stream reassembly, one flow at a time, both directions, bounded.

A ``TcpStream`` turns segments (as captured: out of order, retransmitted, overlapping) into
an in-order byte stream per direction and hands it to a sink (``on_data``/``on_gap``/
``on_end``). Nothing here raises on hostile input: a segment that cannot be placed becomes
a ``Gap`` so the parser above can resynchronise instead of stalling. Memory is bounded by
``max_ooo_bytes`` and ``max_ooo_segments`` per direction; when either would be exceeded the
stream gives up waiting for the hole, reports it as a gap and moves on.

The in-order case (by far the common one) costs one subtraction and one call; out-of-order
segments sit in a small dict keyed by sequence number.

Directions are 0 (the side that opened the flow, or first seen) and 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = (
    "ACK",
    "FIN",
    "RST",
    "SYN",
    "Gap",
    "ReassemblyStats",
    "StreamData",
    "StreamEnd",
    "StreamSink",
    "TcpStream",
    "collect_events",
)

FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10

_MOD = 1 << 32
_HALF = 1 << 31


@dataclass(frozen=True, slots=True)
class StreamData:
    direction: int
    data: bytes
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Gap:
    """``nbytes`` of the ``direction`` stream were never seen (0 when unknown: mid-stream start)."""

    direction: int
    nbytes: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class StreamEnd:
    direction: int  # -1: the whole flow (RST, eviction, end of input)
    ts_ns: int
    reason: str


class StreamSink(Protocol):
    def on_data(self, direction: int, data: bytes, ts_ns: int) -> None: ...
    def on_gap(self, direction: int, nbytes: int, ts_ns: int) -> None: ...
    def on_end(self, direction: int, ts_ns: int, reason: str) -> None: ...


class ReassemblyStats:
    """Counters shared by every stream of one dissector (exported as metrics and in reports)."""

    __slots__ = (
        "bytes_delivered",
        "flows_evicted",
        "flows_total",
        "gap_bytes",
        "gaps",
        "ooo_dropped",
        "ooo_segments",
        "retransmits",
    )

    def __init__(self) -> None:
        self.bytes_delivered = 0
        self.gaps = 0
        self.gap_bytes = 0
        self.ooo_segments = 0
        self.retransmits = 0
        self.ooo_dropped = 0
        self.flows_evicted = 0
        self.flows_total = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class _Half:
    """One direction: next expected sequence number plus the out-of-order holding area."""

    __slots__ = ("ended", "fin_seq", "next_seq", "ooo", "ooo_bytes", "started")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.ooo: dict[int, tuple[bytes, int]] = {}
        self.ooo_bytes = 0
        self.fin_seq: int | None = None
        self.ended = False
        self.started = False


class TcpStream:
    """Reassembles both directions of one TCP connection into ``sink``."""

    __slots__ = (
        "closed",
        "halves",
        "last_ts",
        "max_ooo_bytes",
        "max_ooo_segments",
        "sink",
        "stats",
    )

    def __init__(self, sink: StreamSink, stats: ReassemblyStats | None = None, *,
                 max_ooo_bytes: int = 4 << 20, max_ooo_segments: int = 256) -> None:
        self.sink = sink
        self.halves = (_Half(), _Half())
        self.stats = stats if stats is not None else ReassemblyStats()
        self.max_ooo_bytes = max_ooo_bytes
        self.max_ooo_segments = max_ooo_segments
        self.closed = False
        self.last_ts = 0

    def segment(self, direction: int, seq: int, flags: int, payload: bytes, ts_ns: int) -> None:
        """Feed one captured segment of ``direction`` (0 or 1)."""
        if self.closed:
            return
        self.last_ts = ts_ns
        half = self.halves[direction]
        if flags & RST:
            self.close(ts_ns, "rst")
            return
        if half.ended:
            return  # after this side's FIN: retransmissions, or bytes no peer would accept
        if flags & SYN:
            if half.next_seq is None or not half.started:
                half.next_seq = (seq + 1) % _MOD
                half.started = True
            seq = (seq + 1) % _MOD
        nxt = half.next_seq
        if nxt is None:
            # Flow already in progress when capture started: take this segment as the start
            # and tell the parser it joins mid-stream.
            nxt = half.next_seq = seq
            half.started = True
            self.sink.on_gap(direction, 0, ts_ns)
        n = len(payload)
        if flags & FIN:
            half.fin_seq = (seq + n) % _MOD
        if n:
            diff = (seq - nxt) % _MOD
            if diff == 0:
                half.next_seq = (nxt + n) % _MOD
                self.stats.bytes_delivered += n
                self.sink.on_data(direction, payload, ts_ns)
                if half.ooo:
                    self._drain(direction, half)
            elif diff >= _HALF:
                # Starts before what we already have: retransmission or overlap.
                behind = _MOD - diff
                if behind >= n:
                    self.stats.retransmits += 1
                else:
                    payload = payload[behind:]
                    half.next_seq = (nxt + len(payload)) % _MOD
                    self.stats.bytes_delivered += len(payload)
                    self.sink.on_data(direction, payload, ts_ns)
                    if half.ooo:
                        self._drain(direction, half)
            else:
                self._hold(direction, half, seq, payload, ts_ns)
        if half.fin_seq is not None and half.fin_seq == half.next_seq and not half.ended:
            half.ended = True
            self.sink.on_end(direction, ts_ns, "fin")
            other = self.halves[1 - direction]
            if other.ended:
                self.closed = True
                for h in self.halves:  # anything still held lies beyond a FIN: drop it
                    h.ooo.clear()
                    h.ooo_bytes = 0

    def _hold(self, direction: int, half: _Half, seq: int, payload: bytes, ts_ns: int) -> None:
        old = half.ooo.get(seq)
        if old is not None and len(old[0]) >= len(payload):
            self.stats.retransmits += 1
            return
        if (len(half.ooo) >= self.max_ooo_segments
                or half.ooo_bytes + len(payload) > self.max_ooo_bytes):
            # The hole will not be filled in time: give up on it, then place this segment.
            self.stats.ooo_dropped += 1
            self._skip_hole(direction, half, ts_ns)
            self.segment(direction, seq, 0, payload, ts_ns)
            return
        if old is not None:
            half.ooo_bytes -= len(old[0])
        half.ooo[seq] = (payload, ts_ns)
        half.ooo_bytes += len(payload)
        self.stats.ooo_segments += 1

    def _drain(self, direction: int, half: _Half) -> None:
        """Deliver held segments that have become contiguous (trimming overlaps)."""
        while half.ooo:
            nxt = half.next_seq
            assert nxt is not None
            best = None
            for seq in half.ooo:
                diff = (seq - nxt) % _MOD
                if diff == 0 or diff >= _HALF:
                    best = seq
                    break
            if best is None:
                return
            payload, ts = half.ooo.pop(best)
            half.ooo_bytes -= len(payload)
            behind = (nxt - best) % _MOD
            if behind >= len(payload):
                self.stats.retransmits += 1
                continue
            if behind:
                payload = payload[behind:]
            half.next_seq = (nxt + len(payload)) % _MOD
            self.stats.bytes_delivered += len(payload)
            self.sink.on_data(direction, payload, ts)

    def _skip_hole(self, direction: int, half: _Half, ts_ns: int) -> None:
        """Jump over the hole before the lowest held segment, reporting a gap."""
        nxt = half.next_seq
        if not half.ooo or nxt is None:
            return
        lowest = min(half.ooo, key=lambda s: (s - nxt) % _MOD)
        size = (lowest - nxt) % _MOD
        self.stats.gaps += 1
        self.stats.gap_bytes += size
        self.sink.on_gap(direction, size, ts_ns)
        half.next_seq = lowest
        self._drain(direction, half)

    def close(self, ts_ns: int, reason: str) -> None:
        """End the flow: deliver what is held (with gaps for holes), then end both sides."""
        if self.closed:
            return
        for direction, half in enumerate(self.halves):
            while half.ooo:
                self._skip_hole(direction, half, ts_ns)
        self.closed = True
        self.sink.on_end(-1, ts_ns, reason)


class _Collector:
    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[StreamData | Gap | StreamEnd] = []

    def on_data(self, direction: int, data: bytes, ts_ns: int) -> None:
        self.events.append(StreamData(direction, bytes(data), ts_ns))

    def on_gap(self, direction: int, nbytes: int, ts_ns: int) -> None:
        self.events.append(Gap(direction, nbytes, ts_ns))

    def on_end(self, direction: int, ts_ns: int, reason: str) -> None:
        self.events.append(StreamEnd(direction, ts_ns, reason))


def collect_events(
    segments: list[tuple[int, int, int, bytes, int]], *, close: bool = True,
    max_ooo_bytes: int = 4 << 20, max_ooo_segments: int = 256,
) -> tuple[list[StreamData | Gap | StreamEnd], ReassemblyStats]:
    """Run ``segments`` (direction, seq, flags, payload, ts) through a stream; return events.

    The event-list form of the reassembler, for tests, fuzzing and tools.
    """
    sink = _Collector()
    stream = TcpStream(sink, max_ooo_bytes=max_ooo_bytes, max_ooo_segments=max_ooo_segments)
    for direction, seq, flags, payload, ts in segments:
        stream.segment(direction, seq, flags, payload, ts)
    if close:
        stream.close(segments[-1][4] if segments else 0, "eof")
    return sink.events, stream.stats
