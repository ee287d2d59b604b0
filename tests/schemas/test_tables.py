"""schemas.tables: the key layout round-trips, derived columns follow their stated rules, and
a frame has exactly the declared columns and types."""

from __future__ import annotations

import polars as pl
import pytest

from schemas.calls import Call
from schemas.flows import FlowRecord
from schemas.k8s import Workload
from schemas.tables import (
    CALL_COLUMNS,
    FLOW_COLUMNS,
    call_failed,
    call_rows,
    endpoint_of,
    flow_rows,
    frame,
    hour_prefix,
    parse_table_key,
    table_key,
)


def test_key_round_trip_and_hive_layout() -> None:
    hour = 1_700_000_000 // 3600
    key = table_key("calls", hour, "rawcap.calls", 3, 17, 4242)
    assert key.startswith("kind=calls/date=2023-11-14/hour=22/") and key.endswith(".parquet")
    assert key.startswith(hour_prefix("calls", hour))
    got = parse_table_key("some/prefix/" + key)
    assert tuple(got) == ("calls", hour, "rawcap.calls", 3, 17, 4242)
    with pytest.raises(ValueError):
        parse_table_key("node=n1/date=2023-11-14/hour=22/rawcap.packets-00000-1-2.rcsg")


@pytest.mark.parametrize("call, endpoint", [
    (Call("http1", method="GET", path="/api/users/12345?x=1"), "GET /api/users/{id}"),
    (Call("http1", method="PUT", path="/o/0b9f2c1e-1111-2222-3333-444455556666/items"), "PUT /o/{id}/items"),
    (Call("http1", method="GET", path="/static/app.js"), "GET /static/app.js"),
    (Call("http2", method="GET", path="/t/a1b2c3d4e5f6a7b8c9d0"), "GET /t/{id}"),
    (Call("grpc", method="POST", path="/shop.Cart/Add"), "/shop.Cart/Add"),
    (Call("dns", qname="x.example", qtype=28), "DNS 28"),
    (Call("redis", command="get", key="k1"), "GET"),
])
def test_endpoint_rule(call: Call, endpoint: str) -> None:
    assert endpoint_of(call) == endpoint


@pytest.mark.parametrize("call, failed", [
    (Call("http1", status=200), False), (Call("http1", status=404), False), (Call("http1", status=503), True),
    (Call("grpc", status=200, grpc_status=0), False), (Call("grpc", status=200, grpc_status=14), True),
    (Call("dns", rcode=3), False), (Call("dns", rcode=2), True), (Call("dns", rcode=5), True),
    (Call("redis", error="ERR x"), True), (Call("redis"), False), (Call("postgres", error="42P01"), True),
])
def test_failed_rule(call: Call, failed: bool) -> None:
    assert call_failed(call) is failed


def test_frames_have_the_declared_columns() -> None:
    c = Call("http1", node="n1", method="GET", path="/a", status=500, req_ts_ns=2_000_000_123,
             resp_ts_ns=2_005_000_123, latency_ns=5_000_000, src_workload="web-1", src_namespace="shop",
             dst_workload="service/api", dst_namespace="shop")
    half = Call("http1", node="n1", resp_ts_ns=3_000_000_000, complete=False)
    df = frame("calls", call_rows([(0, 7, c), (0, 8, half)]))
    assert df.columns == [n for n, _t, _d in CALL_COLUMNS]
    assert df.schema["ts"] == pl.Datetime("us", "UTC") and df.schema["failed"] == pl.Boolean
    row, other = df.to_dicts()
    names = (row["src_pod"], row["src_service"], row["dst_pod"], row["dst_service"])
    assert names == ("web-1", "", "", "api")
    assert row["failed"] and row["latency_ns"] == 5_000_000 and row["kafka_offset"] == 7
    assert other["latency_ns"] is None and int(other["ts"].timestamp()) == 3  # response time stands in
    f = FlowRecord("n1", "tcp", "10.0.0.1", 40000, "10.0.0.2", 80, 5_000_000_000, 6_000_000_000,
                   4_000_000_000, 3, 300, 2, 200,
                   src_workload=Workload("pod", "web-1", "shop", "n1", "web", "Deployment", "web"),
                   dst_workload=Workload("service", "api", "shop"))
    fd = frame("flows", flow_rows([(1, 9, f)]))
    assert fd.columns == [n for n, _t, _d in FLOW_COLUMNS]
    r = fd.to_dicts()[0]
    assert int(r["ts"].timestamp()) == 5  # the first packet is later than the interval start
    assert (r["src_pod"], r["src_service"], r["src_owner"], r["dst_service"], r["dst_pod"]) == (
        "web-1", "web", "Deployment/web", "api", "")
