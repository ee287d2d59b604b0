"""The compiled HTTP/1 reader (``dissector/http1/_chttp1.c``) against the pure-Python
reference (``PyHTTP1Reader``): for random sequences of feeds (real, mutated and random
bytes, cut anywhere), gaps, EOF and expected methods, both readers give the same events,
raise the same errors with the same text, and end in the same state (state, buffers,
counters, flags) after every step."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissector._errors import ParseError
from dissector._sentinel import NEED_DATA
from dissector.http1 import CLIENT, SERVER, HTTP1Reader, PyHTTP1Reader, Request

from .test_fuzz import mutated
from .test_http1 import REQS, RESPS

EXAMPLES = int(os.environ.get("RAWCAP_FUZZ_EXAMPLES", "400")) * 2
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NGINX = (b"HTTP/1.1 302 Moved Temporarily\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\n"
         b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
         b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0x2;x=1\r\nok\r\n"
         b"0\r\nT: 1\r\n\r\nHTTP/1.1 101 Switching\r\n\r\n")
WRK = b"GET / HTTP/1.1\r\nHost: 10.0.0.2\r\n\r\nPOST /login HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"


def snapshot(r: Any) -> tuple[Any, ...]:
    return (r.state, r.remaining, r.body_len, bytes(r.buf), bytes(r.body), r.body_trunc, r.eof,
            r.end_ready, r.last_status, list(r.methods), r.ts, r.role, r.max_body)


def outcomes(r: Any) -> list[Any]:
    out: list[Any] = []
    for _ in range(64):
        try:
            ev = r.next_event()
        except ParseError as exc:
            out.append((type(exc), str(exc)))
            return out
        if ev is NEED_DATA:
            return out
        out.append(ev)
    return out


@st.composite
def scripts(draw: Any) -> tuple[str, int, list[tuple[str, Any]]]:
    role = draw(st.sampled_from([CLIENT, SERVER]))
    seed = REQS + WRK if role == CLIENT else RESPS + NGINX
    data = draw(st.one_of(st.just(seed), mutated(seed), st.binary(max_size=300)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    ops: list[tuple[str, Any]] = []
    pos = 0
    for c in [*cuts, len(data)]:
        if draw(st.integers(0, 9)) == 0:
            ops.append(("gap", draw(st.sampled_from([0, 1, 3, 10, 1000]))))
        if role == SERVER and draw(st.booleans()):
            ops.append(("expect", draw(st.sampled_from(["GET", "HEAD", "CONNECT", "POST"]))))
        ops.append(("feed", data[pos:c]))
        pos = c
    if draw(st.booleans()):
        ops.append(("eof", None))
    return role, draw(st.sampled_from([0, 3, 64, 65536])), ops


def run(make: Any, role: str, max_body: int, ops: list[tuple[str, Any]]) -> list[Any]:
    r = make(role, max_body=max_body)
    trace: list[Any] = []
    for i, (op, arg) in enumerate(ops):
        if op == "feed":
            r.feed(arg, i)
        elif op == "gap":
            r.feed_gap(arg, i)
        elif op == "expect":
            r.expect(arg)
        else:
            r.feed_eof()
        trace.append((op, outcomes(r), snapshot(r)))
    return trace


@FUZZ
@given(scripts())
def test_compiled_reader_equals_reference(script: tuple[str, int, list[tuple[str, Any]]]) -> None:
    role, max_body, ops = script
    assert run(HTTP1Reader, role, max_body, ops) == run(PyHTTP1Reader, role, max_body, ops)


def test_the_two_are_what_the_package_exports() -> None:
    assert HTTP1Reader is not PyHTTP1Reader and HTTP1Reader.__module__.endswith("_chttp1")
    r = HTTP1Reader(CLIENT)
    r.feed(b"GET / HTTP/1.1\r\n\r\n", ts_ns=7)
    ev = r.next_event()
    assert isinstance(ev, Request) and ev.ts_ns == 7
