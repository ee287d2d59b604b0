from __future__ import annotations

import pytest

from dissector._calls import Endpoints
from dissector._errors import Malformed, Truncated
from dissector.http1 import (
    CLIENT,
    SERVER,
    EndOfMessage,
    HTTP1Reader,
    PyHTTP1Reader,
    Request,
    Response,
    Resync,
)

from .helpers import drain, same_at_every_split

REQS = (b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n"
        b"X-Trailer: t\r\n\r\n")
RESPS = (b"HTTP/1.1 100 Continue\r\n\r\n"
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
         b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"  # reply to HEAD: no body
         b"HTTP/1.1 204 No Content\r\n\r\n"
         b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n"
         b"HTTP/1.0 200 OK\r\n\r\nuntil close")


@pytest.fixture(params=[HTTP1Reader, PyHTTP1Reader], ids=["compiled", "reference"])
def reader_cls(request: pytest.FixtureRequest) -> type[PyHTTP1Reader]:
    """Every test runs against the compiled twin and the pure-Python reference."""
    return request.param


def test_requests_pipelined_every_split(reader_cls: type[PyHTTP1Reader]) -> None:
    evs = same_at_every_split(lambda: reader_cls(CLIENT), REQS)
    reqs = [e for e in evs if isinstance(e, Request)]
    ends = [e for e in evs if isinstance(e, EndOfMessage)]
    assert [(r.method, r.target) for r in reqs] == [("GET", "/a?x=1"), ("POST", "/b"),
                                                     ("PUT", "/c")]
    assert [e.body_bytes for e in ends] == [0, 5, 5]
    assert ends[2].body == b"abcde"


def make_server(reader: type[PyHTTP1Reader] = HTTP1Reader) -> PyHTTP1Reader:
    r = reader(SERVER, max_body=3)
    for m in ("GET", "HEAD", "DELETE", "GET", "GET"):
        r.expect(m)
    return r


def test_responses_every_split_with_eof_body(reader_cls: type[PyHTTP1Reader]) -> None:
    evs = same_at_every_split(lambda: make_server(reader_cls), RESPS, eof=True)
    resps = [e.status for e in evs if isinstance(e, Response)]
    ends = [e for e in evs if isinstance(e, EndOfMessage)]
    assert resps == [100, 200, 200, 204, 404, 200]
    assert [e.body_bytes for e in ends] == [2, 0, 0, 4, 11]  # 1xx has no EndOfMessage
    assert ends[-1].body == b"unt" and ends[-1].body_truncated  # capped at max_body


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00",
    b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    # found by fuzzing: these used to escape as ValueError / UnicodeDecodeError
    b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
    b"GET / HTTP/1.\xa0\r\n\r\n",
    b"GET / HTTP/1.1\r\nBare: c\rr\r\n\r\n",
    b"GET / HTTP/1.1\r\n:no-name\r\n\r\n",
    b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
])
def test_malformed_poisons(bad: bytes, reader_cls: type[PyHTTP1Reader]) -> None:
    r = reader_cls(CLIENT)
    r.feed(bad)
    with pytest.raises(Malformed):
        drain(r)
    r.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(Malformed):
        r.next_event()


@pytest.mark.parametrize("bad", [b"HTTP/1.\xa0 200 OK\r\n\r\n", b"HTTP/1.1 2\xb20 OK\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 1\xb2\r\n\r\n"])
def test_malformed_status_line_poisons(bad: bytes, reader_cls: type[PyHTTP1Reader]) -> None:
    r = reader_cls(SERVER)
    r.expect("GET")
    r.feed(bad)
    with pytest.raises(Malformed):
        drain(r)


def test_header_whitespace_and_framing_headers_any_case(reader_cls: type[PyHTTP1Reader]) -> None:
    r = reader_cls(CLIENT)
    r.feed(b"POST /u HTTP/1.1\r\nX-A:  padded \t\r\ncOnTeNt-LeNgTh: 3\r\n"
           b"X-Content-Length: 99\r\n\r\nabcGET /next HTTP/1.0\r\n\r\n")
    req, end, nxt, _ = drain(r)
    assert req.headers == (("X-A", "padded"), ("cOnTeNt-LeNgTh", "3"), ("X-Content-Length", "99"))
    assert end.body == b"abc" and nxt.target == "/next"
    r = reader_cls(SERVER)
    r.expect("GET")
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTRANSFER-ENCODING: chunked\r\n\r\n"
           b"2\r\nok\r\n0\r\n\r\n")
    evs = drain(r)
    assert isinstance(evs[-1], EndOfMessage) and evs[-1].body == b"ok"


def test_truncated_is_not_malformed(reader_cls: type[PyHTTP1Reader]) -> None:
    r = reader_cls(CLIENT)
    r.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert isinstance(r.next_event(), Request)
    r.feed_eof()
    with pytest.raises(Truncated):
        drain(r)


def test_gap_inside_body_keeps_sync_gap_elsewhere_resyncs(reader_cls: type[PyHTTP1Reader]) -> None:
    r = reader_cls(CLIENT)
    r.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert isinstance(r.next_event(), Request)
    r.feed_gap(4)
    r.feed(b"xyz")
    r.feed(b"GET /next HTTP/1.1\r\n\r\n")
    evs = drain(r)
    assert isinstance(evs[0], EndOfMessage) and evs[0].body_bytes == 10 and evs[0].body_truncated
    assert evs[1].target == "/next"
    # a gap in a head: resync at the next start line
    r.feed(b"GET /lost HTT")
    r.feed_gap(100)
    r.feed(b"garbage\r\nmore GET /found HTTP/1.1\r\n\r\n")
    evs = drain(r)
    assert isinstance(evs[0], Resync) and evs[0].lost_message
    assert [e.target for e in evs if isinstance(e, Request)] == ["/found"]


def test_midstream_start_finds_next_response(reader_cls: type[PyHTTP1Reader]) -> None:
    r = reader_cls(SERVER)
    r.feed_gap(0)
    r.feed(b"ody of an earlier one\r\nHTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")
    evs = drain(r)
    assert isinstance(evs[0], Resync) and not evs[0].lost_message
    assert [e.status for e in evs if isinstance(e, Response)] == [302]


def test_head_size_capped(reader_cls: type[PyHTTP1Reader]) -> None:
    r = reader_cls(CLIENT)
    r.feed(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000)
    with pytest.raises(Malformed):
        drain(r)
    assert len(r.buf) == 0


@pytest.mark.parametrize(("req_ts", "resp_ts", "complete", "error"), [
    (1_000, 1_700, True, ""), (1_000, 0, False, "no response"), (2_000, 1_500, False, "x")])
def test_positional_http_call_equals_the_keyword_one(req_ts: int, resp_ts: int, complete: bool,
                                                     error: str) -> None:
    ep = Endpoints("node-1", "tcp", "10.0.0.1", 40000, "10.0.0.2", 80)
    rq, rs = (("Host", "a"), ("Accept", "*/*")), (("Content-Length", "2"),)
    got = ep.http("http1", req_ts, resp_ts, "GET", "/x", "a", 204, 77, 88, complete, error, rq, rs)
    want = ep.call("http1", req_ts_ns=req_ts, resp_ts_ns=resp_ts,
                   latency_ns=resp_ts - req_ts if resp_ts >= req_ts and resp_ts else 0,
                   method="GET", path="/x", host="a", status=204, req_bytes=77, resp_bytes=88,
                   complete=complete, error=error, req_headers=rq, resp_headers=rs)
    assert got == want
