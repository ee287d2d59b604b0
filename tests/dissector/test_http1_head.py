"""The compiled HTTP/1 head parser (``dissector/http1/_chttp1.c``) against its pure-Python
reference (``_head.py:py_parse_head``): the same tuple or the same error text for real
heads, heads built from the grammar's tokens, mutated ones and random bytes, as requests
and as responses; and the reader gives the same events through either."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissector.http1 import _chttp1, _head  # _chttp1: built by make setup
from dissector.http1._head import py_parse_head

from .helpers import pure_python_run
from .test_fuzz import mutated
from .test_http1 import REQS, RESPS

EXAMPLES = int(os.environ.get("RAWCAP_FUZZ_EXAMPLES", "400")) * 5
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


NGINX = (b"HTTP/1.1 302 Moved Temporarily\r\nServer: nginx/1.22.1\r\n"
         b"Date: Thu, 03 Dec 2026 15:32:18 GMT\r\nContent-Type: text/html\r\n"
         b"Content-Length: 145\r\nLocation: http://10.233.147.2/\r\nConnection: keep-alive")
HEADS = [h for blob in (REQS, RESPS) for h in blob.split(b"\r\n\r\n") if h] + [
    NGINX, b"GET /login HTTP/1.1\r\nHost: 10.233.147.2",
    b"POST /x HTTP/1.0\r\ncontent-length: 007\r\nCONTENT-LENGTH:7",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked \r\nX:\t y \t",
    b"HTTP/1.1 200\r\nContent-Length: 1\r\nContent-Length: 2",
    b"HTTP/1.1 099 Low", b"HTTP/1.1 200 OK\r\nBad Name : x", b"GET  / HTTP/1.1",
    b"GET /a\nb HTTP/1.9\r\n\xc0\xe9: \xff", b"HTTP/1.1 200 OK\r\n\r\nX: y",
]
NAMES = [b"Host", b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding",
         b"transfer-encoding", b"X-A", b"", b"Bad ", b"\xe9t\xe9", b"a:b"]
VALUES = [b"", b" 12 ", b"12", b"0", b"\xb2", b"1234567890123456789", b"123456789012345678",
          b"chunked", b"gzip, chunked", b"chunked,", b" CHUNKED\t", b"a\rb", b"a\nb", b"x" * 50,
          b"\t\t", b"-1", b"1 2"]
STARTS = [b"GET / HTTP/1.1", b"POST /p?q HTTP/1.0", b"CONNECT h:443 HTTP/1.1", b"FOO / HTTP/1.1",
          b"GET / HTTP/2.0", b"GET /", b"get / HTTP/1.1", b"HTTP/1.1 200 OK", b"HTTP/1.0 404",
          b"HTTP/1.1 2x0 OK", b"HTTP/1.1 000 zero", b"HTTP/1.\xb2 200 OK", b"HTTP/1.1  200",
          b"", b"\r", b"GET / HTTP/1.1 extra"]


@st.composite
def built(draw: Any) -> bytes:
    lines = [draw(st.sampled_from(STARTS))]
    for _ in range(draw(st.integers(0, 6))):
        sep = draw(st.sampled_from([b":", b": ", b":\t", b" :", b""]))
        lines.append(draw(st.sampled_from(NAMES)) + sep + draw(st.sampled_from(VALUES)))
    return b"\r\n".join(lines) + draw(st.sampled_from([b"", b"\r", b"\r\n", b"\n"]))


def both(head: bytes) -> None:
    for is_request in (True, False):
        for buf in (head, bytearray(head + b"\r\n\r\nrest")):
            assert _chttp1.parse_head(buf, len(head), is_request) == py_parse_head(buf, len(head),
                                                                             is_request), head


@pytest.mark.parametrize("head", HEADS)
def test_known_heads_agree(head: bytes) -> None:
    both(head)


@FUZZ
@given(st.one_of(built(), st.binary(max_size=200), mutated(NGINX), mutated(REQS[:60])))
def test_fuzzed_heads_agree(head: bytes) -> None:
    both(head)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _chttp1.parse_head(b"GET / HTTP/1.1", 99, True)
    with pytest.raises(TypeError):
        _chttp1.parse_head("GET / HTTP/1.1", 3, True)  # type: ignore[arg-type]


def test_reader_uses_the_compiled_twin_and_the_reference_on_request() -> None:
    assert _head.COMPILED and _head.parse_head is _chttp1.parse_head
    code = ("from dissector.http1 import _head; import sys; "
            "sys.exit(0 if not _head.COMPILED and _head.parse_head is _head.py_parse_head else 1)")
    assert pure_python_run(code) == 0
