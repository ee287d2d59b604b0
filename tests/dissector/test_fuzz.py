"""Hypothesis drives every parser and the reassembler with random and mutated real input.

Property: nothing but ``ParseError`` (Truncated/Malformed) escapes a parser, nothing at all
escapes the reassembler or the flow table, and memory stays within the caps: every parser's
buffer (fed large junk too), the reassembler's held segments after every segment, and every
flow of the flow table (reassembly, detection buffer, session buffers) after every packet.

The budget is fixed (``FUZZ_EXAMPLES`` examples per property, derandomized so CI is
repeatable); ``RAWCAP_FUZZ_EXAMPLES=5000`` runs a deeper search locally.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissector import NEED_DATA, Dissector, ParseError, TcpStream
from dissector._calls import Endpoints, PostgresSession, Redactor, SessionStats
from dissector._reassembly import _Collector
from dissector.dns import DnsTcpReader, parse_message
from dissector.http1 import CLIENT, SERVER, HTTP1Reader
from dissector.http1._parser import MAX_HEAD
from dissector.http2 import HTTP2Reader
from dissector.http2._parser import MAX_FRAME
from dissector.postgres import PgReader, first_keyword, statement_spans
from dissector.redis import RespReader

from .test_dns import Q, R
from .test_http1 import REQS, RESPS
from .test_http2 import conversation
from .test_postgres import CLIENT as PG_CLIENT
from .test_postgres import PAIRS as PG_PAIRS
from .test_postgres import SERVER as PG_SERVER
from .test_redis import CMDS, REPLIES

FUZZ_EXAMPLES = int(os.environ.get("RAWCAP_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Tokens that parsers treat specially, and bytes that are digits or whitespace to
#: ``str.isdigit``/``str.strip`` but not to ``int()`` or ASCII (b"\xb2" is superscript two).
TOKENS = [b"\r\n", b"\r\n\r\n", b":", b" ", b"\t", b"\n", b"\r", b"\x00", b"\xff", b"\xb2",
          b"\xa0", b"\x85", b"0", b"-1", b"ffffffff", b"99999999999999999999", b"\xc0\x0c"]
H2C, H2S = conversation()


@st.composite
def mutated(draw: Any, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "dup", "insert", "token"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 20))]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 40))]
        elif op == "insert":
            data[i:i] = draw(st.binary(max_size=16))
        else:
            data[i:i + draw(st.integers(0, 2))] = draw(st.sampled_from(TOKENS))
    return bytes(data)


def inputs(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(seed))


def run_reader(r: Any, data: bytes, cuts: list[int], gap_at: int | None,
               cap: int | None = None) -> None:
    """Feed ``data`` split at ``cuts`` (a gap at ``gap_at``), drain after every chunk; with
    ``cap``, the reader's buffer must never hold more than ``cap`` + the last chunk."""
    pos = 0
    for c in [*sorted(set(cuts)), len(data)]:
        chunk = data[pos:c]
        pos = max(pos, c)
        if gap_at is not None and gap_at == c:
            r.feed_gap(7, 0)
        r.feed(chunk, 0)
        try:
            for _ in range(10000):
                if r.next_event() is NEED_DATA:
                    break
        except ParseError:
            return
        if cap is not None:
            assert len(r.buf) <= cap + len(chunk)
    r.feed_eof()
    try:
        for _ in range(10000):
            if r.next_event() is NEED_DATA:
                break
    except ParseError:
        pass


CUTS = st.lists(st.integers(0, 400), max_size=5)
GAP = st.one_of(st.none(), st.integers(0, 400))


@FUZZ
@given(inputs(REQS), CUTS, GAP)
def test_http1_client(data: bytes, cuts: list[int], gap: int | None) -> None:
    run_reader(HTTP1Reader(CLIENT, max_body=64), data, cuts, gap)


@FUZZ
@given(inputs(RESPS), CUTS, GAP)
def test_http1_server(data: bytes, cuts: list[int], gap: int | None) -> None:
    r = HTTP1Reader(SERVER, max_body=64)
    for m in ("GET", "HEAD", "CONNECT", "GET"):
        r.expect(m)
    run_reader(r, data, cuts, gap)
    assert len(r.body) <= 64


@FUZZ
@given(inputs(H2C), CUTS, GAP)
def test_http2_client(data: bytes, cuts: list[int], gap: int | None) -> None:
    run_reader(HTTP2Reader(client=True), data, cuts, gap)


@FUZZ
@given(inputs(H2S), CUTS, GAP)
def test_http2_server(data: bytes, cuts: list[int], gap: int | None) -> None:
    run_reader(HTTP2Reader(client=False), data, cuts, gap)


@FUZZ
@given(st.one_of(inputs(CMDS), inputs(REPLIES)), CUTS, GAP, st.booleans())
def test_redis(data: bytes, cuts: list[int], gap: int | None, client: bool) -> None:
    run_reader(RespReader(client=client), data, cuts, gap)


@FUZZ
@given(inputs(PG_CLIENT), CUTS, GAP)
def test_postgres_client(data: bytes, cuts: list[int], gap: int | None) -> None:
    run_reader(PgReader(client=True), data, cuts, gap)


@FUZZ
@given(inputs(PG_SERVER), CUTS, GAP)
def test_postgres_server(data: bytes, cuts: list[int], gap: int | None) -> None:
    r = PgReader(client=False)
    r.expect_ssl_reply()
    run_reader(r, data, cuts, gap)


#: Pieces of SQL the statement splitter treats specially.
SQL_TOKENS = [";", "'", "''", "E'", "\\", '"', "$$", "$a$", "$1", "--", "\n", "/*", "*/", "(",
              ")", " ", "select", "BEGIN", "end", "case", "create", "or", "replace",
              "function", "procedure", "atomic", "x", "é"]


@FUZZ
@given(st.lists(st.sampled_from(SQL_TOKENS) | st.text(max_size=4), max_size=40))
def test_postgres_statement_spans(parts: list[str]) -> None:
    sql = "".join(parts)
    spans = statement_spans(sql)
    end = 0
    for a, b in spans:  # in order, disjoint, trimmed (but an unterminated literal), non-empty
        assert end <= a < b <= len(sql)
        assert not sql[a].isspace() and sql[a] != ";"
        assert not sql[b - 1].isspace() or b == len(sql)
        end = b
    first_keyword(sql)


PG_SIDES = st.tuples(st.integers(1, len(PG_PAIRS) - 1), st.integers(0, 1))


@FUZZ
@given(st.data(), st.lists(PG_SIDES, max_size=3, unique=True))
def test_postgres_session_counts_each_byte_once(data: Any, bent: list[tuple[int, int]]) -> None:
    """A real-shaped conversation with a few sides of exchanges mutated and cut: nothing but
    calls leaves the session, and the calls' sizes never add up to more than was sent."""
    out: list[Any] = []
    stats = SessionStats()
    s = PostgresSession(Endpoints("n", "tcp", "10.0.0.1", 5000, "10.0.0.2", 5432), 0,
                        out.append, stats, Redactor())
    sent = [0, 0]
    for i, pair in enumerate(PG_PAIRS):
        for d in (0, 1):
            chunk, cut = pair[d], 0
            if (i, d) in bent:
                chunk = data.draw(mutated(chunk))
                cut = data.draw(st.integers(0, len(chunk)))
            sent[d] += len(chunk)
            for part in (chunk[:cut], chunk[cut:]):
                s.on_data(d, part, i)
    s.on_end(-1, 99, "fin")
    assert stats.calls == len(out)
    assert sum(c.req_bytes for c in out) <= sent[0]
    assert sum(c.resp_bytes for c in out) <= sent[1]
    assert all(c.complete or c.resp_bytes == 0 for c in out)


@FUZZ
@given(st.one_of(inputs(Q), inputs(R)))
def test_dns_message(data: bytes) -> None:
    try:
        m = parse_message(data)
    except ParseError:
        return
    assert all(len(q.name) <= 255 * 4 for q in m.questions)


@FUZZ
@given(st.one_of(inputs(len(Q).to_bytes(2, "big") + Q), st.binary(max_size=200)), CUTS, GAP)
def test_dns_tcp(data: bytes, cuts: list[int], gap: int | None) -> None:
    run_reader(DnsTcpReader(), data, cuts, gap)


SEGMENT = st.tuples(st.integers(0, 1), st.integers(0, (1 << 32) - 1) | st.integers(0, 3000),
                    st.integers(0, 0x3F), st.binary(max_size=120), st.integers(0, 10**6))


@FUZZ
@given(st.lists(SEGMENT, max_size=60), st.integers(1, 8), st.integers(64, 2000))
def test_reassembler(segments: list[tuple], max_segs: int, max_bytes: int) -> None:
    sink = _Collector()
    stream = TcpStream(sink, max_ooo_bytes=max_bytes, max_ooo_segments=max_segs)
    for direction, seq, flags, payload, ts in segments:
        stream.segment(direction, seq, flags, payload, ts)
        for half in stream.halves:  # memory held for holes stays within the caps
            assert len(half.ooo) <= max_segs
            assert half.ooo_bytes <= max_bytes
            assert half.ooo_bytes == sum(len(p) for p, _ in half.ooo.values())
    stream.close(0, "eof")
    assert all(not h.ooo and h.ooo_bytes == 0 for h in stream.halves)
    events, stats = sink.events, stream.stats
    assert stats.bytes_delivered == sum(len(e.data) for e in events if hasattr(e, "data"))
    assert stats.gap_bytes == sum(e.nbytes for e in events if hasattr(e, "nbytes"))
    assert events[-1].__class__.__name__ == "StreamEnd"


#: Large junk built from a repeated unit (cheap for hypothesis, big for the parser).
HUGE = st.tuples(st.binary(min_size=1, max_size=40), st.integers(100, 6000)).map(
    lambda t: t[0] * t[1])


@settings(FUZZ, max_examples=max(20, FUZZ_EXAMPLES // 5))
@given(st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n",
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]), HUGE)
def test_http1_buffer_capped_on_huge_input(prefix: bytes, junk: bytes) -> None:
    data = prefix + junk
    r = HTTP1Reader(SERVER if prefix.startswith(b"HTTP") else CLIENT, max_body=1024)
    r.expect("GET")
    run_reader(r, data, list(range(1448, len(data), 1448)), None, cap=MAX_HEAD)
    assert len(r.body) <= 1024


@settings(FUZZ, max_examples=max(20, FUZZ_EXAMPLES // 5))
@given(st.sampled_from([H2C[:24], H2S[:9]]), HUGE)
def test_http2_buffer_capped_on_huge_input(prefix: bytes, junk: bytes) -> None:
    data = prefix + junk
    r = HTTP2Reader(client=prefix.startswith(b"PRI"))
    run_reader(r, data, list(range(1448, len(data), 1448)), None, cap=MAX_FRAME + 9)


def _tcp(src: int, sport: int, dport: int, seq: int, flags: int, payload: bytes) -> bytes:
    """Client k sends from 10.0.0.k to 10.0.0.(100+k); ``src`` 100+k is that server."""
    dst = src - 100 if src >= 100 else src + 100
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0,
                     bytes((10, 0, 0, src)), bytes((10, 0, 0, dst)))
    return (b"\x02" * 12 + b"\x08\x00" + ip
            + struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 1, 0, 0) + payload)


def flow_frames(port: int, cdata: bytes, sdata: bytes, k: int) -> list[bytes]:
    c, s, sport = 1 + k, 101 + k, 40000 + k
    return ([_tcp(c, sport, port, 999, 0x02, b""), _tcp(s, port, sport, 4999, 0x12, b"")]
            + [_tcp(c, sport, port, 1000 + i, 0x18, cdata[i:i + 1448])
               for i in range(0, len(cdata), 1448)]
            + [_tcp(s, port, sport, 5000 + i, 0x18, sdata[i:i + 1448])
               for i in range(0, len(sdata), 1448)])


#: (server port, client seed, server seed) per protocol the flow table detects.
FLOW_SEEDS = [(80, REQS, RESPS), (8080, H2C, H2S), (6379, CMDS, REPLIES),
              (5432, PG_CLIENT, PG_SERVER), (53, len(Q).to_bytes(2, "big") + Q,
                                            len(R).to_bytes(2, "big") + R)]
MAX_FLOW_BYTES = 4096
DETECT_LIMIT = 16384


def check_flow_memory(d: Dissector, max_flows: int) -> None:
    assert len(d.order) <= max_flows and len(d.flows) <= 2 * max_flows
    for flow in d.order:
        for half in flow.stream.halves:
            assert half.ooo_bytes <= MAX_FLOW_BYTES
        assert flow.pending_bytes <= DETECT_LIMIT + 1500
        sess = flow.session
        if sess is not None:
            for r in sess.readers:
                assert len(r.buf) <= MAX_FLOW_BYTES


def test_flow_seeds_reach_the_sessions() -> None:
    """The harness below is only worth something if unmutated seeds become calls."""
    for port, cseed, sseed in FLOW_SEEDS:
        out: list[Any] = []
        d = Dissector(out.append, max_flow_bytes=MAX_FLOW_BYTES)
        d.run(enumerate(flow_frames(port, cseed, sseed, 0)))
        d.finish()
        assert any(c.complete for c in out), port


@FUZZ
@given(st.sampled_from(range(len(FLOW_SEEDS))), st.data())
def test_flow_table_memory_per_packet(which: int, data: Any) -> None:
    """Mutated client/server bytes of each protocol through the whole flow table, small and
    huge, in MSS-sized segments with some reordering: nothing escapes, caps hold per packet."""
    port, cseed, sseed = FLOW_SEEDS[which]
    big = data.draw(st.booleans())
    cdata = data.draw(HUGE if big else inputs(cseed))
    sdata = data.draw(inputs(sseed))
    if big:
        cdata = cseed[:40] + cdata
    frames: list[bytes] = []
    for k in range(3):  # three flows at once through a table of two
        segs = flow_frames(port, cdata, sdata, k)
        if len(segs) > 4 and data.draw(st.booleans()):
            segs[2], segs[3] = segs[3], segs[2]
        frames += segs
    out: list[Any] = []
    d = Dissector(out.append, max_flows=2, max_flow_bytes=MAX_FLOW_BYTES, max_ooo_segments=8)
    for i, f in enumerate(frames):
        d.packet(i, f)
        check_flow_memory(d, 2)
    d.finish()
    assert not d.order and not d.flows


_frames_cache: list[tuple[int, bytes]] = []


def real_frames(pcap: Path) -> list[tuple[int, bytes]]:
    if not _frames_cache:
        from .test_engine import frames

        _frames_cache.extend(frames(pcap))
    return _frames_cache


def test_flow_table_with_mutated_real_capture(real_pcap: Path) -> None:
    fr = real_frames(real_pcap)

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.data())
    def run(data: Any) -> None:
        frames = list(fr)
        for _ in range(data.draw(st.integers(0, 30))):
            i = data.draw(st.integers(0, len(frames) - 1))
            op = data.draw(st.sampled_from(["drop", "dup", "swap", "flip", "trunc"]))
            ts, f = frames[i]
            if op == "drop":
                del frames[i]
            elif op == "dup":
                frames.insert(i, (ts, f))
            elif op == "swap" and i + 1 < len(frames):
                frames[i], frames[i + 1] = frames[i + 1], frames[i]
            elif op == "flip" and len(f) > 54:
                j = data.draw(st.integers(14, len(f) - 1))
                f = f[:j] + bytes([data.draw(st.integers(0, 255))]) + f[j + 1:]
                frames[i] = (ts, f)
            elif op == "trunc":
                frames[i] = (ts, f[:data.draw(st.integers(0, len(f)))])
        out: list[Any] = []
        d = Dissector(out.append, max_flows=4, max_flow_bytes=MAX_FLOW_BYTES,
                      max_ooo_segments=8)
        for ts, f in frames:
            d.packet(ts, f)
            check_flow_memory(d, 4)
        d.finish()
        assert not d.order and not d.flows

    run()
