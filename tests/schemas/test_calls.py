"""``rawcap.calls`` records: version 2 (many calls per record) built from packed rows equals
msgpack's encoding of the documented map, and reads back; version 1 (one call per record)
is still written byte for byte as first specified and read by ``decode_calls``."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from schemas.calls import (
    CALLS_VERSION,
    FIELDS,
    Call,
    call_rows,
    decode_call,
    decode_calls,
    decode_row,
    encode_call,
    encode_calls,
)


def reference(call: Call) -> bytes:
    """The encoding as first specified: ``dataclasses.asdict`` + headers as lists + ``v``."""
    d: dict[str, Any] = dataclasses.asdict(call)
    d["req_headers"] = [list(h) for h in call.req_headers]
    d["resp_headers"] = [list(h) for h in call.resp_headers]
    d["v"] = 1
    return msgpack.packb(d, use_bin_type=True)


CALLS = [
    Call("http1", node="n1", src_ip="10.0.0.1", src_port=40000, dst_ip="10.0.0.2", dst_port=80,
         req_ts_ns=1_764_775_938_000_000_000, resp_ts_ns=1_764_775_938_000_100_000,
         latency_ns=100_000, method="GET", path="/api/v1/orders?x=é", host="shop",
         status=200, req_bytes=60, resp_bytes=300,
         req_headers=(("Host", "shop"), ("Authorization", "[redacted]")),
         resp_headers=(("Server", "nginx"),), src_workload="web-1", src_namespace="shop",
         dst_workload="service/api", dst_namespace="shop"),
    Call("grpc", transport="tcp", status=200, grpc_status=14, complete=False,
         error="stream reset (error 8)", extra={"stream_id": 7}),
    Call("dns", transport="udp", qname="api.rawcap.test", qtype=28, rcode=3,
         extra={"answers": 0}),
    Call("postgres", command="SELECT", key="select 1", extra={
        "tag": "SELECT 1", "rows": 1, "sqlstate": "", "extended": True}),
    Call("redis", command="GET", key="k" * 300, resp_ts_ns=5),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.proto)
def test_encode_call_bytes_equal_the_reference_encoding(call: Call) -> None:
    assert encode_call(call) == reference(call)
    assert decode_call(encode_call(call)) == call
    assert decode_calls(encode_call(call)) == [call]  # version 1 is still read


def values(c: Call) -> list[Any]:
    d = c.as_dict()
    return [d[f] for f in FIELDS]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536])
def test_version_2_record_is_the_documented_map(n: int) -> None:
    calls = [CALLS[i % len(CALLS)] for i in range(n)]
    value = encode_calls(call_rows(calls))
    assert CALLS_VERSION == 2
    assert value == msgpack.packb({"v": 2, "fields": list(FIELDS),
                                   "calls": [values(c) for c in calls]}, use_bin_type=True)
    assert decode_calls(value) == calls


def test_rows_read_back_alone_and_by_field_names() -> None:
    rows = call_rows(CALLS)
    assert [decode_row(r) for r in rows] == CALLS
    # a writer with other fields (one added, one unknown here, one missing, another order)
    names = ["node", "proto", "brand_new", "status"]
    value = msgpack.packb({"v": 2, "fields": names, "calls": [["n1", "http1", 42, 204]]})
    assert decode_calls(value) == [Call("http1", node="n1", status=204)]


def test_decode_rejects_bad_records() -> None:
    for value, what in [(msgpack.packb({"v": 3}), "version 3"),
                        (msgpack.packb({"v": 2, "calls": []}), "fields/calls"),
                        (msgpack.packb({"v": 2, "fields": list(FIELDS), "calls": [1]}),
                         "not an array"),
                        (msgpack.packb({"v": 2, "fields": ["proto"], "calls": [[""]]}),
                         "without protocol"),
                        (msgpack.packb([1]), "not a map"), (b"\xc1", "not msgpack")]:
        with pytest.raises(ValueError, match=what):
            decode_calls(value)
    with pytest.raises(ValueError, match="decode_calls"):
        decode_call(encode_calls(call_rows(CALLS[:1])))


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.proto)
def test_as_dict_equals_asdict_with_header_lists(call: Call) -> None:
    want = dataclasses.asdict(call)
    want["req_headers"] = [list(h) for h in call.req_headers]
    want["resp_headers"] = [list(h) for h in call.resp_headers]
    got = call.as_dict()
    assert got == want and list(got) == list(want)
    got["extra"]["added"] = 1  # a copy: the call is not changed through it
    assert "added" not in call.extra


def test_decode_rejects_other_versions_and_garbage() -> None:
    d = msgpack.unpackb(encode_call(CALLS[0]))
    d["v"] = 3
    with pytest.raises(ValueError, match="version 3"):
        decode_call(msgpack.packb(d))
    with pytest.raises(ValueError, match="not msgpack"):
        decode_call(b"\xc1")
