"""The flow table: Ethernet frames in, call records out, in one process, bounded.

Hot path per TCP packet: one L4 decode, one dict lookup; a flow that detection rejected is
skipped right there. A new flow is only created by a SYN or by a segment with payload (a bare
ACK after close does not resurrect a flow). The table holds at most ``max_flows`` flows;
beyond that the least recently created flow is closed (its pending calls emitted as
incomplete) and counted in ``stats.flows_evicted``. Flows idle for ``idle_timeout_s`` of
capture time are closed by a sweep every 64k packets.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

from rawcap.packet import format_addr, parse_l4
from rawcap.pcap import PCAP_RECORD_FIELDS, layout
from schemas.calls import Call

from ._calls import DnsPairer, Endpoints, Redactor, SessionStats, new_session
from ._detect import DNS_PORTS, UNKNOWN, detect
from ._errors import ParseError
from ._reassembly import ACK, FIN, RST, SYN, ReassemblyStats, TcpStream
from .dns import parse_message

__all__ = ("Dissector",)

_DETECT_LIMIT: Final = 16384
#: Ethernet + IPv4 (no options) + the first 14 bytes of TCP, in one unpack.
_FAST = struct.Struct("!12xHBxH2xH1xB2x4s4sHHI4xBB").unpack_from
_SWEEP_EVERY: Final = 65536
# A classic-pcap record header (rawcap.pcap); a rec-layout body's first 16 bytes are read in
# the same shape (ts_ns as two u32, caplen, origlen)
_PCAP_LE: Final = layout(PCAP_RECORD_FIELDS, "<").unpack_from
_PCAP_BE: Final = layout(PCAP_RECORD_FIELDS, ">").unpack_from
_Walk = Callable[["Dissector", Any, int, int, int, int, bool], tuple[int, int]]


class _Flow:
    """One TCP connection: reassembler + (once detected) protocol session."""

    __slots__ = (
        "addrs",
        "client_dir",
        "eng",
        "ignored",
        "keys",
        "midstream",
        "pending",
        "pending_bytes",
        "ports",
        "session",
        "stream",
    )

    def __init__(self, eng: Dissector, keys: tuple[Any, Any], client_dir: int | None,
                 addrs: tuple[bytes, bytes], ports: tuple[int, int]) -> None:
        self.eng = eng
        self.keys = keys
        self.stream = TcpStream(self, eng.rstats, max_ooo_bytes=eng.max_flow_bytes,
                                max_ooo_segments=eng.max_ooo_segments)
        self.session: Any = None
        self.ignored = False
        self.client_dir = client_dir
        self.pending: list[tuple[str, int, Any, int]] = []  # before detection
        self.pending_bytes = 0
        self.midstream = [False, False]
        self.addrs = addrs  # direction 0 sender, receiver
        self.ports = ports

    # --- StreamSink before/after detection --------------------------------------------------
    def on_data(self, direction: int, data: bytes, ts_ns: int) -> None:
        s = self.session
        if s is not None:
            s.on_data(direction, data, ts_ns)
            return
        if self.ignored:
            return
        self.pending.append(("d", direction, data, ts_ns))
        self.pending_bytes += len(data)
        sport = self.ports[direction]
        dport = self.ports[1 - direction]
        buf = b"".join(p[2] for p in self.pending if p[0] == "d" and p[1] == direction)
        verdict = detect(buf, sport, dport, midstream=self.midstream[direction])
        if verdict is None:
            if self.pending_bytes > _DETECT_LIMIT or len(self.pending) > 64:
                self._ignore()
            return
        if verdict is UNKNOWN or not verdict[0]:
            if self.client_dir is None or direction == self.client_dir:
                self._ignore()
            return  # a server speaking first in a protocol we do not know: wait for the client
        proto, sender_is_client = verdict
        client_dir = direction if sender_is_client else 1 - direction
        self._start(proto, client_dir)

    def on_gap(self, direction: int, nbytes: int, ts_ns: int) -> None:
        if self.session is not None:
            self.session.on_gap(direction, nbytes, ts_ns)
        elif not self.ignored:
            if nbytes == 0:
                self.midstream[direction] = True
            self.pending.append(("g", direction, nbytes, ts_ns))

    def on_end(self, direction: int, ts_ns: int, reason: str) -> None:
        if self.session is not None:
            self.session.on_end(direction, ts_ns, reason)
        if direction < 0:
            self.eng._forget(self)

    def _ignore(self) -> None:
        self.ignored = True
        self.pending = []
        self.eng.flows_ignored += 1

    def _start(self, proto: str, client_dir: int) -> None:
        eng = self.eng
        c, s = client_dir, 1 - client_dir
        ep = Endpoints(eng.node, "tcp", eng._addr(self.addrs[c]), self.ports[c],
                       eng._addr(self.addrs[s]), self.ports[s])
        self.session = sess = new_session(
            proto, ep, client_dir, eng.emit, eng.sstats, eng.redact, max_body=eng.max_body,
            pairer=eng.dns, flow_key=(ep.src_ip, ep.src_port, ep.dst_ip, ep.dst_port, "tcp"))
        eng.flows_detected[proto] = eng.flows_detected.get(proto, 0) + 1
        sess.max_buffer = eng.max_flow_bytes
        self.stream.sink = sess  # skip this layer from now on
        pending, self.pending = self.pending, []
        for kind, d, val, ts in pending:
            if kind == "d":
                sess.on_data(d, val, ts)
            else:
                sess.on_gap(d, val, ts)


class Dissector:
    """Frames in (``packet``), calls out (``emit``); ``finish()`` flushes every flow."""

    def __init__(self, emit: Callable[[Call], None], *, node: str = "",
                 max_flows: int = 100_000, max_flow_bytes: int = 4 << 20,
                 max_ooo_segments: int = 256, max_body: int = 65536,
                 redact_headers: Iterable[str] = (), redact: bool = True,
                 idle_timeout_s: float = 300.0) -> None:
        self.emit = emit
        self.node = node
        self.max_flows = max_flows
        self.max_flow_bytes = max_flow_bytes
        self.max_ooo_segments = max_ooo_segments
        self.max_body = max_body
        self.redact = Redactor(redact_headers, enabled=redact)
        self.idle_ns = int(idle_timeout_s * 1e9)
        self.flows: dict[tuple[Any, ...], tuple[_Flow, int]] = {}
        self.order: dict[_Flow, None] = {}
        self.rstats = ReassemblyStats()
        self.sstats = SessionStats()
        self.dns = DnsPairer(emit, self.sstats)
        self.packets = 0
        self.flows_ignored = 0
        self.flows_detected: dict[str, int] = {}
        self.udp_dns = 0
        self.udp_errors = 0
        self.last_ts = 0
        self._addrs: dict[bytes, str] = {}

    def stats(self) -> dict[str, Any]:
        return {"packets": self.packets, "flows_open": len(self.order),
                "flows_ignored": self.flows_ignored, "flows_detected": dict(self.flows_detected),
                "udp_dns": self.udp_dns, "udp_errors": self.udp_errors,
                **self.rstats.as_dict(), **self.sstats.as_dict()}

    def packet(self, ts_ns: int, frame: bytes | memoryview) -> None:
        """Dissect one Ethernet frame captured at ``ts_ns``."""
        self.packets += 1
        if not self.packets & (_SWEEP_EVERY - 1):
            self.sweep(ts_ns)
        if type(frame) is not bytes:
            frame = bytes(frame)
        if len(frame) >= 54:
            # Fast path: untagged IPv4 without options carrying TCP (most of what we see).
            etype, vihl, total, frag, proto, src, dst, sport, dport, seq, doff, flags = \
                _FAST(frame, 0)
            if etype == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
                key = (src, sport, dst, dport)
                ent = self.flows.get(key)
                off = 34 + (doff >> 4) * 4
                plen = total - 20 - (doff >> 4) * 4
                if ent is None:
                    if not (flags & SYN) and plen <= 0:
                        return
                    p = parse_l4(frame)
                    if p is None:
                        return
                    ent = self._new_flow(key, p, flags)
                flow, d = ent
                if flow.ignored:
                    if flags & 0x05:
                        self._forget(flow)
                    return
                stream = flow.stream
                if plen <= 0:
                    if not flags & 0x07:
                        return  # a pure ACK changes nothing for reassembly
                    stream.segment(d, seq, flags, b"", ts_ns)
                else:
                    stream.segment(d, seq, flags, frame[off:off + plen], ts_ns)
                if stream.closed:
                    self._forget(flow)
                return
            if etype == 0x0800 and vihl == 0x45 and proto == 17 and not frag & 0x3FFF:
                # UDP: same offsets for the ports; only DNS ports are dissected.
                if sport in DNS_PORTS or dport in DNS_PORTS:
                    self.last_ts = ts_ns
                    try:
                        msg = parse_message(frame[42:14 + total], ts_ns)
                    except ParseError:
                        self.udp_errors += 1
                        return
                    self.udp_dns += 1
                    self._dns(msg, src, sport, dst, dport)
                return
        p = parse_l4(frame)
        if p is None or p.fragment:
            return
        if p.proto == 6:
            key = (p.src, p.sport, p.dst, p.dport)
            ent = self.flows.get(key)
            flags = p.flags
            if ent is None:
                if not (flags & SYN) and not p.payload_len:
                    return
                ent = self._new_flow(key, p, flags)
            flow, d = ent
            if flow.ignored:
                if flags & (FIN | RST):
                    self._forget(flow)
                return
            off = p.payload_off
            flow.stream.segment(d, p.seq, flags, bytes(frame[off:off + p.payload_len]), ts_ns)
            if flow.stream.closed:
                self._forget(flow)
        elif p.sport in DNS_PORTS or p.dport in DNS_PORTS:
            self.last_ts = ts_ns
            off = p.payload_off
            try:
                msg = parse_message(bytes(frame[off:off + p.payload_len]), ts_ns)
            except ParseError:
                self.udp_errors += 1
                return
            self.udp_dns += 1
            self._dns(msg, p.src, p.sport, p.dst, p.dport)

    def _dns(self, msg: Any, src: bytes, sport: int, dst: bytes, dport: int) -> None:
        s, d = self._addr(src), self._addr(dst)
        if msg.is_response:
            ep = Endpoints(self.node, "udp", d, dport, s, sport)
        else:
            ep = Endpoints(self.node, "udp", s, sport, d, dport)
        self.dns.message(msg, ep, (ep.src_ip, ep.src_port, ep.dst_ip, ep.dst_port, "udp"))

    def _addr(self, packed: bytes) -> str:
        """Formatted address, cached (DNS packets would otherwise format two per packet)."""
        cache = self._addrs
        text = cache.get(packed)
        if text is None:
            if len(cache) >= 65536:
                cache.clear()
            text = cache[packed] = format_addr(packed)
        return text

    def _new_flow(self, key: tuple[Any, ...], p: Any, flags: int) -> tuple[_Flow, int]:
        if len(self.order) >= self.max_flows:
            oldest = next(iter(self.order))
            self.rstats.flows_evicted += 1
            oldest.stream.close(oldest.stream.last_ts, "evicted")
            self._forget(oldest)
        rkey = (p.dst, p.dport, p.src, p.sport)
        client_dir = None
        if flags & SYN:
            client_dir = 1 if flags & ACK else 0
        flow = _Flow(self, (key, rkey), client_dir, (p.src, p.dst), (p.sport, p.dport))
        self.flows[key] = (flow, 0)
        self.flows[rkey] = (flow, 1)
        self.order[flow] = None
        self.rstats.flows_total += 1
        return flow, 0

    def _forget(self, flow: _Flow) -> None:
        if self.order.pop(flow, 0) is None:
            for k in flow.keys:
                ent = self.flows.get(k)
                if ent is not None and ent[0] is flow:
                    del self.flows[k]

    def sweep(self, now_ns: int) -> None:
        """Close flows idle for longer than the idle timeout (capture time)."""
        limit = now_ns - self.idle_ns
        for flow in [f for f in self.order if f.stream.last_ts < limit]:
            flow.stream.close(flow.stream.last_ts, "idle")
            self._forget(flow)

    def finish(self) -> None:
        """End of input: close every flow and emit what is still pending."""
        for flow in list(self.order):
            flow.stream.close(flow.stream.last_ts, "end of input")
            self._forget(flow)
        self.dns.flush()

    def run(self, frames: Iterable[tuple[int, bytes | memoryview]]) -> None:
        pkt = self.packet
        for ts, frame in frames:
            pkt(ts, frame)

    def run_pcap_records(self, buf: Any, off: int, big_endian: bool, ns_mul: int,
                         ) -> tuple[int, int]:
        """Walk classic-pcap records in ``buf`` from ``off``; return (packets, end offset):
        an end offset short of ``len(buf)`` means the last record was cut off."""
        return _walk(self, buf, off, 16, 1_000_000_000, ns_mul, big_endian)

    def run_records(self, body: bytes) -> tuple[int, int]:
        """Walk a batch body of layout ``rec`` (``schemas/FORMAT.md``: ``ts_ns`` u64,
        ``caplen``, ``origlen``, ``ifindex``, ``pkttype``, 3 zero bytes, then the frame);
        return (packets, end offset), as :meth:`run_pcap_records`."""
        # ts_ns is read as two u32 (low, high): the pcap walk's (seconds, fraction) shape
        return _walk(self, body, 0, 24, 1, 1 << 32, False)

    def _py_walk(self, buf: Any, off: int, hsize: int, mul_a: int, mul_b: int,
                 big_endian: bool) -> tuple[int, int]:
        """Records of ``hsize`` bytes whose first 16 are (a, b, caplen, _) u32, each followed by
        its frame; the frame's time is ``a * mul_a + b * mul_b``.

        The same work as calling :meth:`packet` per record, with the fast path of a TCP
        segment of a known flow inlined (every other frame goes to :meth:`packet`): a file of
        millions of packets is where per-call overhead shows. The walk the two ``run_*``
        methods use is this, or its compiled twin ``dissector/_cwalk.c`` when built.
        """
        rec = _PCAP_BE if big_endian else _PCAP_LE
        fast = _FAST
        flows = self.flows
        packet = self.packet
        n = len(buf)
        count = 0
        while off + hsize <= n:
            a, b, caplen, _orig = rec(buf, off)
            off += hsize
            end = off + caplen
            if end > n:
                off -= hsize
                break
            ts = a * mul_a + b * mul_b
            count += 1
            if caplen >= 54 and (count & 0xFFFF):
                (etype, vihl, total, frag, proto, src, dst, sport, dport, seq, doff,
                 flags) = fast(buf, off)
                if etype == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
                    ent = flows.get((src, sport, dst, dport))
                    if ent is not None:
                        flow = ent[0]
                        hl = (doff >> 4) * 4
                        plen = total - 20 - hl
                        if flow.ignored:
                            if flags & 0x05:
                                self._forget(flow)
                        elif plen > 0:
                            p0 = off + 34 + hl
                            stream = flow.stream
                            payload = buf[p0:p0 + min(plen, end - p0)]
                            half = stream.halves[ent[1]]
                            if (not flags & 0x07 and half.next_seq == seq and not half.ooo
                                    and not stream.closed and half.fin_seq is None):
                                # In-order data segment: TcpStream.segment's first branch,
                                # inlined.
                                half.next_seq = (seq + len(payload)) & 0xFFFFFFFF
                                stream.last_ts = ts
                                stream.stats.bytes_delivered += len(payload)
                                stream.sink.on_data(ent[1], payload, ts)
                            else:
                                stream.segment(ent[1], seq, flags, payload, ts)
                            if stream.closed:
                                self._forget(flow)
                        elif flags & 0x07:
                            stream = flow.stream
                            stream.segment(ent[1], seq, flags, b"", ts)
                            if stream.closed:
                                self._forget(flow)
                        self.packets += 1
                        off = end
                        continue
            packet(ts, buf[off:end])
            off = end
        return count, off


def _compiled_walk() -> _Walk:
    """``dissector/_cwalk.c``'s ``walk`` when built (and the test hook ``no-ctwins`` is off),
    else :meth:`Dissector._py_walk`."""
    import importlib

    from rawcap.hooks import hook

    if not hook("no-ctwins"):
        try:
            cwalk = importlib.import_module("dissector._cwalk")
        except ImportError:
            pass
        else:
            from ._reassembly import ReassemblyStats, _Half

            cwalk.setup(_Flow, TcpStream, _Half, ReassemblyStats)
            return cast(_Walk, cwalk.walk)
    return Dissector._py_walk


_walk: _Walk = _compiled_walk()
