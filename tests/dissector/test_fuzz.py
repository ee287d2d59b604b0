"""Hypothesis drives every parser and the reassembler with random and mutated real input.

Property: nothing but ``ParseError`` (Truncated/Malformed) escapes a parser, nothing at all
escapes the reassembler or the flow table, and buffers stay within their caps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissector import Dissector, ParseError, collect_events
from dissector.dns import DnsTcpReader, parse_message
from dissector.http1 import CLIENT, SERVER, HTTP1Reader
from dissector.http2 import HTTP2Reader
from dissector.postgres import PgReader
from dissector.redis import RespReader

from .test_dns import Q, R
from .test_http1 import REQS, RESPS
from .test_http2 import conversation
from .test_postgres import CLIENT as PG_CLIENT
from .test_postgres import SERVER as PG_SERVER
from .test_redis import CMDS, REPLIES

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
H2C, H2S = conversation()


@st.composite
def mutated(draw: Any, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "dup", "insert"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 20))]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 40))]
        else:
            data[i:i] = draw(st.binary(max_size=16))
    return bytes(data)


def inputs(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(seed))


def run_reader(r: Any, data: bytes, cuts: list[int], gap_at: int | None) -> None:
    pos = 0
    for c in [*sorted(set(cuts)), len(data)]:
        chunk = data[pos:c]
        pos = max(pos, c)
        if gap_at is not None and gap_at == c:
            r.feed_gap(7, 0)
        r.feed(chunk, 0)
        try:
            for _ in range(10000):
                if r.next_event().__class__.__name__ == "NeedData":
                    break
        except ParseError:
            return
    r.feed_eof()
    try:
        for _ in range(10000):
            if r.next_event().__class__.__name__ == "NeedData":
                break
    except ParseError:
        pass
    assert len(r.buf) <= 1 << 20


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
    events, stats = collect_events(segments, max_ooo_segments=max_segs, max_ooo_bytes=max_bytes)
    assert stats.bytes_delivered == sum(len(e.data) for e in events if hasattr(e, "data"))


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
        d = Dissector(out.append, max_flows=4, max_flow_bytes=4096, max_ooo_segments=8)
        d.run(frames)
        assert len(d.order) <= 4
        d.finish()
        assert not d.order and not d.flows

    run()
