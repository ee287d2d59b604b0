"""Sans-I/O parts: records, workload index, flow table, filters, enricher."""

from __future__ import annotations

import pytest

from enrich import Enricher, FilterPlanner, FlowTable, ProcIndex, Selection, compute_filters, to_record
from enrich._filters import CAPTURE_NOTHING
from rawcap.packet import parse_l4
from schemas import Packet, encode_batch
from schemas.control import CaptureFilter, decode_control
from schemas.flows import FlowRecord, ProcessInfo, UnsupportedFlow, decode_flow, encode_flow
from schemas.k8s import (
    PodRecord,
    ServiceRecord,
    UnsupportedRecord,
    Workload,
    WorkloadIndex,
    decode_k8s,
    encode_k8s,
    pack_ip,
)

from .fakekube import endpointslice, node, pod, service
from .frames import ACK, FIN, PSH, SYN, handshake, tcp_frame, udp_frame

S = 1_000_000_000


def test_records_round_trip() -> None:
    for kind, obj in [("pod", pod("ns", "web-abc-1", "10.231.0.1", "n1", owner=("ReplicaSet", "web-abc"),
                                  pod_template_hash="abc", container_id="c0ffee")),
                      ("service", service("ns", "web", "10.96.0.1")),
                      ("endpointslice", endpointslice("ns", "web", [("web-abc-1", "10.231.0.1")])),
                      ("node", node("n1", "192.0.2.9"))]:
        obj["metadata"]["uid"] = "u1"
        rec = to_record(kind, obj)
        assert decode_k8s(encode_k8s(rec)) == rec
    p = to_record("pod", pod("ns", "web-abc-1", "10.231.0.1", "n1", owner=("ReplicaSet", "web-abc"),
                              pod_template_hash="abc", container_id="c0ffee"))
    assert (p.owner_kind, p.owner_name, p.containers) == ("Deployment", "web", ("c0ffee",))  # type: ignore[union-attr]
    rs = to_record("pod", pod("ns", "x-1", "10.231.0.2", "n1", owner=("ReplicaSet", "x")))
    assert (rs.owner_kind, rs.owner_name) == ("ReplicaSet", "x")  # type: ignore[union-attr]


def test_bad_records_rejected() -> None:
    with pytest.raises(UnsupportedRecord, match="version"):
        decode_k8s(b"\x82\xa1v\x09\xa4kind\xa3pod")
    with pytest.raises(UnsupportedRecord):
        decode_k8s(b"\xc1garbage")
    with pytest.raises(UnsupportedFlow):
        decode_flow(b"\x80")


def test_index_ip_reuse_and_late_delete() -> None:
    idx = WorkloadIndex()
    ip = pack_ip("10.231.0.5")
    a = PodRecord("ns", "a", "uid-a", "n1", ("10.231.0.5",), start_ns=100 * S)
    b = PodRecord("other", "b", "uid-b", "n1", ("10.231.0.5",), start_ns=150 * S)
    idx.apply(a.key, a, 101 * S)
    idx.apply(b.key, b, 151 * S)  # b arrives before a's delete
    idx.apply(a.key, None, 152 * S)
    assert idx.resolve(ip, 120 * S).name == "a"  # type: ignore[union-attr]
    assert idx.resolve(ip, 151 * S).name == "b"  # type: ignore[union-attr]
    assert idx.resolve(ip, 99 * S) is None
    # terminal phase releases the IP at the container's end
    done = PodRecord("other", "b", "uid-b", "n1", ("10.231.0.5",), phase="Succeeded",
                     start_ns=150 * S, end_ns=160 * S)
    idx.apply(done.key, done, 161 * S)
    assert idx.resolve(ip, 159 * S).name == "b"  # type: ignore[union-attr]
    assert idx.resolve(ip, 160 * S) is None
    assert idx.prune(200 * S) == 2 and idx.resolve(ip, 120 * S) is None


def test_index_services_and_membership() -> None:
    idx = WorkloadIndex()
    for kind, obj in [("pod", pod("ns", "api-0", "10.231.0.7", "n1", owner=("StatefulSet", "api"))),
                      ("service", service("ns", "api", "10.96.0.7")),
                      ("endpointslice", endpointslice("ns", "api", [("api-0", "10.231.0.7")]))]:
        rec = to_record(kind, obj)
        idx.apply(rec.key, rec, 10**18)
    got = idx.resolve(pack_ip("10.231.0.7"), 2 * 10**18)
    assert got == Workload("pod", "api-0", "ns", "n1", "api", "StatefulSet", "api")
    svc = idx.resolve(pack_ip("10.96.0.7"), 2 * 10**18)
    assert svc is not None and svc.kind == "service" and svc.service == "api"
    svc_rec = ServiceRecord("ns", "api", "sid", ("10.96.0.8",))
    idx.apply(svc_rec.key, svc_rec, 3 * 10**18)  # ClusterIP changed: old one ends now
    assert idx.resolve(pack_ip("10.96.0.7"), 4 * 10**18) is None
    assert idx.resolve(pack_ip("10.96.0.8"), 4 * 10**18).name == "api"  # type: ignore[union-attr]


def _feed(table: FlowTable, frames: list[bytes], t0: int, step: int = 1000) -> None:
    for i, f in enumerate(frames):
        l4 = parse_l4(f)
        assert l4 is not None
        table.add(t0 + i * step, l4, len(f), tag=i)


def test_flow_direction_counters_and_intervals() -> None:
    t = FlowTable("n1", 10 * S)
    frames = handshake("10.231.0.1", 40000, "10.231.0.2", 80)
    _feed(t, frames[1:], 100 * S)  # capture started mid-handshake: SYN-ACK still tells who
    assert t.expire() == []
    _feed(t, [udp_frame("10.231.0.1", 5353, "10.231.0.9", 53)], 111 * S)
    flows = t.expire()
    assert len(flows) == 1
    f = flows[0]
    assert (f.ap, f.bp) == (40000, 80)
    assert (f.packets_fwd, f.packets_rev) == (3, 3)
    assert f.flags_fwd == SYN | ACK | PSH | FIN - SYN or f.flags_fwd & FIN
    assert f.flags_rev & SYN and f.flags_rev & FIN
    assert f.bytes_fwd == sum(len(x) for x in frames[1:] if x[34:36] == (40000).to_bytes(2, "big"))
    assert t.min_tag() == 0 and len(t) == 1
    assert [x.proto for x in t.flush()] == [17]


def test_long_flow_reports_every_interval() -> None:
    t = FlowTable("n1", 1 * S)
    for i in range(5):
        l4 = parse_l4(tcp_frame("10.0.0.1", 1, "10.0.0.2", 2, ACK))
        assert l4 is not None
        t.add(i * S + 5, l4, 60)
    out = t.expire() + t.flush()
    assert [f.bucket for f in out] == [0, 1, 2, 3, 4]
    assert all(f.packets_fwd == 1 for f in out)


def test_flow_table_is_bounded() -> None:
    t = FlowTable("n1", 10 * S, max_flows=100)
    for port in range(1000):
        l4 = parse_l4(udp_frame("10.0.0.1", 1000 + port, "10.0.0.2", 53))
        assert l4 is not None
        t.add(S + port, l4, 60)
    assert len(t) <= 100 and t.evicted == 900
    assert len(t.expire(S)) == 900


def test_filters_from_values() -> None:
    pods = [PodRecord("shop", "web-1", "u1", "n1", ("10.231.0.1",), phase="Running"),
            PodRecord("kube-system", "dns-1", "u2", "n1", ("10.231.0.2",), phase="Running"),
            PodRecord("shop", "db-0", "u3", "n2", ("10.231.0.3",), phase="Running"),
            PodRecord("shop", "hostnet", "u4", "n2", ("192.0.2.2",), host_network=True),
            PodRecord("shop", "done", "u5", "n2", ("10.231.0.9",), phase="Succeeded")]
    assert compute_filters(pods, ["n1", "n2"], Selection()) == {
        "filter/*": CaptureFilter(), "filter/n1": CaptureFilter(), "filter/n2": CaptureFilter()}
    excl = compute_filters(pods, ["n1", "n2"], Selection(excluded=("kube-system",)))
    assert excl["filter/n1"].deny_ips == ("10.231.0.2/32",) and not excl["filter/n1"].allow_ips
    assert excl["filter/n2"] == CaptureFilter()
    narrow = compute_filters(pods, ["n1", "n2", "n3"], Selection(regex="^web", namespaces=("shop",)))
    assert narrow["filter/n1"].allow_ips == ("10.231.0.1/32",)
    assert narrow["filter/n2"].allow_ips == CAPTURE_NOTHING
    assert narrow["filter/n3"].allow_ips == CAPTURE_NOTHING
    assert narrow["filter/*"].allow_ips == CAPTURE_NOTHING


def test_planner_publishes_only_changes_with_rising_versions() -> None:
    pods = [PodRecord("shop", "web-1", "u1", "n1", ("10.231.0.1",))]
    planner = FilterPlanner(Selection(excluded=("shop",)))
    first = planner.plan(pods, ["n1"])
    assert set(first) == {"filter/*", "filter/n1"}
    assert planner.plan(pods, ["n1"]) == {}
    pods.append(PodRecord("shop", "web-2", "u2", "n1", ("10.231.0.4",)))
    second = planner.plan(pods, ["n1"])
    assert list(second) == ["filter/n1"]
    assert second["filter/n1"].version > first["filter/n1"].version
    widened = FilterPlanner(Selection())
    widened.seed("filter/n9", second["filter/n1"])  # left on the topic by the old values
    assert widened.plan(pods, ["n1"])["filter/n9"].deny_ips == ()
    assert decode_control(second["filter/n1"].encode()) == second["filter/n1"]


def test_enricher_joins_workloads_and_processes() -> None:
    idx = WorkloadIndex()
    for obj in (pod("shop", "client-1", "10.231.0.1", "n1"), pod("shop", "server-1", "10.231.0.2", "n1")):
        rec = to_record("pod", obj)
        idx.apply(rec.key, rec, 10**18)
    procs = ProcIndex()
    procs.add(1_700_000_000 * S, pack_ip("10.231.0.1"), 40000, ProcessInfo(4242, "curl", "c0ffee", 7))
    e = Enricher(idx, procs, 10 * S, grace_ns=0)
    t0 = 1_800_000_000 * S
    pkts = [Packet(t0 + i * 1000, len(f), len(f), 2, 0, memoryview(f))
            for i, f in enumerate(handshake("10.231.0.1", 40000, "10.231.0.2", 80))]
    e.add_batch(0, 7, encode_batch(node="n1", seq=1, packets=pkts, ifaces={2: "eth0"}))
    assert e.commit_offsets() == {0: 7}
    assert e.due(now_ns=t0) == []
    [rec] = e.flush()
    assert rec.src_workload.name == "client-1" and rec.dst_workload.name == "server-1"  # type: ignore[union-attr]
    assert rec.src_process == ProcessInfo(4242, "curl", "c0ffee", 7) and rec.dst_process is None
    assert (rec.packets_fwd, rec.packets_rev, rec.tcp_flags) == (4, 3, "FIN,SYN,PSH,ACK")
    assert decode_flow(encode_flow(rec)) == rec
    assert e.commit_offsets() == {0: 8}
    assert isinstance(rec, FlowRecord)


def test_process_context_kinds() -> None:
    from schemas.procs import ProcRecord

    idx = ProcIndex()
    t = 1_800_000_000 * S

    def rec(**kw: object) -> ProcRecord:
        base: dict[str, object] = {"ts_ns": t, "node": "n1", "pid": 1, "tid": 1, "comm": "x", "cgroup_id": 0}
        base.update(kw)
        return ProcRecord(**base)  # type: ignore[arg-type]

    idx.apply(rec(kind="tcp", pid=10, comm="curl", saddr="10.231.0.1", sport=40000, daddr="10.231.0.2",
                  dport=80, proto=6))
    idx.apply(rec(kind="listen", pid=20, comm="nginx", saddr="0.0.0.0", sport=80, pod_uid="uid-web"))
    idx.apply(rec(kind="listen", pid=21, comm="envoy", saddr="0.0.0.0", sport=80, pod_uid="uid-other"))
    idx.apply(rec(kind="connect", pid=30, comm="dig", daddr="10.96.0.10", dport=53, proto=17))
    idx.apply_value(b"\x81\xa1k\xa3bad")  # counted, skipped
    a, b = pack_ip("10.231.0.1"), pack_ip("10.231.0.2")
    src, dst = idx.lookup("n1", a, 40000, b, 80, t + 1, lambda ip, ts: "uid-web")
    assert (src.comm, dst.comm) == ("curl", "nginx")  # type: ignore[union-attr]
    _, ambiguous = idx.lookup("n1", a, 40000, b, 80, t + 1, lambda ip, ts: "")
    assert ambiguous is None  # two pods listen on :80 and the destination pod is unknown
    src, _ = idx.lookup("n1", pack_ip("10.231.0.5"), 5353, pack_ip("10.96.0.10"), 53, t)
    assert src is not None and src.comm == "dig"
    assert idx.lookup("n2", pack_ip("10.231.0.5"), 5353, pack_ip("10.96.0.10"), 53, t) == (None, None)
    assert idx.lookup("n1", a, 40000, b, 80, t - 10 * S, None)[0] is None  # before the report
    assert idx.bad == 1
