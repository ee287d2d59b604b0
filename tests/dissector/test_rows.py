"""The compiled row packer (``dissector/_crows.c``) writes the bytes of the reference
(``schemas.calls.call_rows``: msgpack) for every kind of value a call can hold, and hands
calls it does not pack itself (unusual values) to the reference."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissector import _crows, _rows  # _crows: built by make setup
from schemas.calls import Call, call_rows, decode_row

from .helpers import pure_python_run

EXAMPLES = int(os.environ.get("RAWCAP_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
INTS = st.one_of(st.integers(-40, 300), st.integers(-2**63, 2**64 - 1),
                 st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                  -1, -32, -33, -128, -129, -32768, -32769, -2**31,
                                  -2**31 - 1, 2**63, 2**64 - 1]))
TEXT = st.one_of(st.text(max_size=40), st.text(min_size=250, max_size=300),
                 st.sampled_from(["", "GET", "é" * 40, "🚀", "x" * 65536]))
SCALAR = st.one_of(st.none(), st.booleans(), INTS, TEXT, st.floats(allow_nan=False),
                   st.binary(max_size=300))
EXTRA = st.dictionaries(TEXT, st.recursive(SCALAR, lambda s: st.lists(s, max_size=3)
                                           | st.dictionaries(TEXT, s, max_size=3), max_leaves=6),
                        max_size=4)
HEADERS = st.lists(st.tuples(TEXT, TEXT), max_size=20).map(tuple)


@st.composite
def calls(draw: Any) -> Call:
    return Call(draw(st.sampled_from(["http1", "grpc", "dns"])), node=draw(TEXT),
                src_ip=draw(TEXT), src_port=draw(INTS), req_ts_ns=draw(INTS),
                latency_ns=draw(INTS), path=draw(TEXT), status=draw(INTS),
                complete=draw(st.booleans()), req_headers=draw(HEADERS),
                resp_headers=draw(HEADERS), extra=draw(EXTRA))


@FUZZ
@given(st.lists(calls(), max_size=5))
def test_compiled_rows_are_the_reference_bytes(cs: list[Call]) -> None:
    assert _crows.pack_rows(cs) == call_rows(cs)
    assert [_crows.pack_row(c) for c in cs] == call_rows(cs)


def test_unusual_values_go_to_the_reference() -> None:
    class Port(int):
        pass

    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    odd = [Call("http1", src_port=Port(80)), Call("http1", extra={"deep": deep}),
           Call("http1", extra={"t": (1, 2.5, b"x")})]
    assert _crows.pack_rows(odd) == call_rows(odd)
    assert [_crows.pack_row(c) for c in odd] == call_rows(odd)
    assert [decode_row(r).src_port for r in _crows.pack_rows(odd)] == [80, 0, 0]
    with pytest.raises(OverflowError):
        _crows.pack_rows([Call("http1", status=2**64)])  # msgpack's own error, from the reference
    with pytest.raises(UnicodeEncodeError):
        _crows.pack_rows([Call("http1", path="\ud800")])
    with pytest.raises(UnicodeEncodeError):
        _crows.pack_row(Call("http1", path="\ud800"))


def test_the_dissector_uses_the_twin_unless_told_not_to() -> None:
    assert _rows.COMPILED and _rows.rows is _crows.pack_rows and _rows.row is _crows.pack_row
    code = ("from dissector import _rows; from schemas.calls import call_rows; import sys; "
            "sys.exit(0 if not _rows.COMPILED and _rows.rows is call_rows "
            "and _rows.row is _rows._one else 1)")
    assert pure_python_run(code) == 0
