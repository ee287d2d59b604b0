"""The compiled text lines (``dissector/_ctext.c``) are the reference's
(``dissector._text.py_lines``: ``format_call`` per call) for every kind of call the dissector
makes and for odd field values (non-ASCII and lone surrogates, empty and long strings, ints
at and beyond 64 bits, bools where ints belong, str subclasses, times before 1970 and after
9999, every protocol's summary), and hand calls they do not write themselves to the
reference (the same line, or the same exception)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissector import _ctext, _text  # _ctext: built by make setup
from dissector._text import py_lines
from schemas.calls import Call

from .helpers import pure_python_run

EXAMPLES = int(os.environ.get("RAWCAP_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


class Name(str):
    pass


class Port(int):
    pass


#: values the compiled lines write themselves
TS = st.one_of(st.just(0), st.integers(1, 2**62),
               st.integers(1_700_000_000 * 10**9, 1_800_000_000 * 10**9),
               st.sampled_from([1, 999_999_999, 10**9, 951_782_400 * 10**9 - 1,
                                253402300799 * 10**9 + 999_999_999, 2**63 - 1]))
INTS = st.one_of(st.integers(-40, 70000), st.integers(-2**63, 2**63 - 1),
                 st.sampled_from([0, -1, 2**63 - 1, -2**63]))
LATENCY = st.one_of(st.just(0), st.integers(1, 10**12), st.integers(-2**63, 2**63 - 1),
                    st.sampled_from([1, 499, 500, 1500, 2**53 + 1, 2**63 - 1, -1]))
TEXT = st.one_of(st.sampled_from(["", "GET", "/", "10.1.0.5", "fe80::1", "shop", "web-1",
                                  "é" * 3, "🚀", "a\nb", "x" * 300]), st.text(max_size=20))
PROTO = st.sampled_from(["http1", "http2", "grpc", "dns", "redis", "postgres", "x",
                         "longproto", "dné", "🚀🚀"])
#: values handed to the reference (one per odd call)
ODD = {"ts": st.sampled_from([253402300800 * 10**9, -1, -10**9 - 1, 2**63, 2**64, True]),
       "int": st.sampled_from([2**63, -2**63 - 1, 2**70, True, False, Port(80)]),
       "text": st.sampled_from(["\ud800", "a\udfffb", Name("x"), Name(""), 7, None]),
       "complete": st.sampled_from([0, 1, "", "y", None])}
KINDS = {"req_ts_ns": "ts", "resp_ts_ns": "ts", "latency_ns": "ts", "src_port": "int",
         "dst_port": "int", "status": "int", "grpc_status": "int", "qtype": "int",
         "rcode": "int", "proto": "text", "src_ip": "text", "dst_ip": "text", "method": "text",
         "path": "text", "qname": "text", "key": "text", "command": "text", "error": "text",
         "src_workload": "text", "dst_workload": "text", "src_namespace": "text",
         "dst_namespace": "text", "complete": "complete"}


@st.composite
def calls(draw: Any) -> Call:
    """A call with plain values (the compiled path), one in ten with an odd field."""
    c = Call(draw(PROTO), node="n1", src_ip=draw(TEXT), src_port=draw(INTS),
             dst_ip=draw(TEXT), dst_port=draw(INTS), req_ts_ns=draw(TS),
             resp_ts_ns=draw(TS), latency_ns=draw(LATENCY), method=draw(TEXT),
             path=draw(TEXT), status=draw(INTS), grpc_status=draw(INTS), qname=draw(TEXT),
             qtype=draw(INTS), rcode=draw(INTS), command=draw(TEXT), key=draw(TEXT),
             complete=draw(st.booleans()), error=draw(TEXT), src_workload=draw(TEXT),
             dst_workload=draw(TEXT), src_namespace=draw(TEXT), dst_namespace=draw(TEXT),
             extra=draw(st.sampled_from([{}, {"tag": "SELECT 1"}, {"tag": ""},
                                         {"tag": "\ud800"}])))
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(sorted(KINDS)))
        setattr(c, name, draw(ODD[KINDS[name]]))
    return c


def outcome(f: Any, cs: list[Call]) -> tuple[str, Any]:
    try:
        return "ok", f(cs)
    except Exception as exc:  # the same exception type, from the reference in both cases
        return "raised", type(exc)


@FUZZ
@given(st.lists(calls(), max_size=6))
def test_compiled_lines_are_the_reference_text(cs: list[Call]) -> None:
    assert outcome(_ctext.lines, cs) == outcome(py_lines, cs)


def http(**kw: Any) -> Call:
    base: dict[str, Any] = dict(proto="http1", node="n1", src_ip="10.1.0.5", src_port=40000,
                                dst_ip="10.96.0.6", dst_port=80,
                                req_ts_ns=1_764_806_400_123_456_789,
                                resp_ts_ns=1_764_806_400_124_000_000, latency_ns=543_211,
                                method="GET", path="/api/v1/items?id=7", status=200)
    return Call(**{**base, **kw})


def test_the_lines_a_user_sees() -> None:
    """What format_call writes (moving it to dissector._text changed none of it)."""
    cs = [http(),
          http(src_workload="web-1", src_namespace="shop", dst_workload="service/api",
               dst_namespace="shop", complete=False, error="flow ended (fin)"),
          http(proto="grpc", grpc_status=14, latency_ns=0, dst_workload="node/n1"),
          Call("dns", transport="udp", src_ip="10.1.0.5", src_port=5353, dst_ip="10.96.0.10",
               dst_port=53, resp_ts_ns=1_764_806_401_000_000_000, qname="example.com.",
               qtype=1, rcode=3),
          Call("redis", command="GET", key="", req_ts_ns=5),
          Call("postgres", key="SELECT 1", extra={"tag": "SELECT 1"})]
    want = ("2025-12-04T00:00:00.123456789Z http1 10.1.0.5:40000 > 10.96.0.6:80 "
            "GET /api/v1/items?id=7 -> 200 0.543ms\n"
            "2025-12-04T00:00:00.123456789Z http1 10.1.0.5:40000 (shop/web-1) > "
            "10.96.0.6:80 (shop/service/api) GET /api/v1/items?id=7 -> 200 0.543ms"
            "  [incomplete: flow ended (fin)]\n"
            "2025-12-04T00:00:00.123456789Z grpc  10.1.0.5:40000 > 10.96.0.6:80 (node/n1) "
            "GET /api/v1/items?id=7 -> 200 grpc-status=14 -\n"
            "2025-12-04T00:00:01.000000000Z dns   10.1.0.5:5353 > 10.96.0.10:53 "
            "example.com. type=1 rcode=3 -\n"
            "1970-01-01T00:00:00.000000005Z redis :0 > :0 GET -\n"
            "- postgres :0 > :0 SELECT 1 -> SELECT 1 -\n")
    assert py_lines(cs) == want
    assert _ctext.lines(cs) == want


def test_odd_calls_go_to_the_reference() -> None:
    odd = [http(src_ip=Name("10.1.0.5")), http(src_port=Port(1)), http(status=True),
           http(path="\ud800/x"), http(req_ts_ns=-5), http(latency_ns=2**64),
           http(complete=0, error="e"), Call("redis", key=" k \t")]
    assert _ctext.lines(odd) == py_lines(odd)
    assert "\ud800/x" in _ctext.lines(odd)
    with pytest.raises((OverflowError, ValueError, OSError)):
        py_lines([http(req_ts_ns=2**80)])
    with pytest.raises((OverflowError, ValueError, OSError)):
        _ctext.lines([http(req_ts_ns=2**80)])
    assert _ctext.lines(()) == ""
    unset = Call.__new__(Call)  # slots never set: the reference's AttributeError
    assert outcome(_ctext.lines, [unset]) == outcome(py_lines, [unset]) == ("raised",
                                                                            AttributeError)


def test_a_batch_is_every_line_in_order() -> None:
    cs = [http(req_ts_ns=1_764_806_400_000_000_000 + i * 7_777_777, src_port=40000 + i % 9,
               status=200 + i % 3, latency_ns=i) for i in range(5000)]
    assert _ctext.lines(cs) == py_lines(cs)


def test_rawcap_uses_the_twin_unless_told_not_to() -> None:
    assert _text.COMPILED and _text.lines is _ctext.lines
    code = ("from dissector import _text; import sys; "
            "sys.exit(0 if not _text.COMPILED and _text.lines is _text.py_lines else 1)")
    assert pure_python_run(code) == 0
