"""``rawcap.calls`` records: the fast encoder writes the bytes of the reference encoding."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from schemas.calls import CALLS_VERSION, Call, decode_call, encode_call


def reference(call: Call) -> bytes:
    """The encoding as first specified: ``dataclasses.asdict`` + headers as lists + ``v``."""
    d: dict[str, Any] = dataclasses.asdict(call)
    d["req_headers"] = [list(h) for h in call.req_headers]
    d["resp_headers"] = [list(h) for h in call.resp_headers]
    d["v"] = CALLS_VERSION
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
    d["v"] = 2
    with pytest.raises(ValueError, match="version 2"):
        decode_call(msgpack.packb(d))
    with pytest.raises(ValueError, match="not msgpack"):
        decode_call(b"\xc1")
