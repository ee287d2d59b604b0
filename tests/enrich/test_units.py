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


def test_index_pod_first_seen_finished() -> None:
    """Replaying a compacted topic: a Job pod's only record is its terminal one, and it may
    come after the record of the pod that got its IP next. Both are dated right."""
    idx = WorkloadIndex()
    ip = pack_ip("10.231.0.6")
    nxt = PodRecord("ns", "web-1", "uid-web", "n1", ("10.231.0.6",), phase="Running", start_ns=130 * S)
    job = PodRecord("ns", "job-x", "uid-job", "n1", ("10.231.0.6",), phase="Succeeded",
                    owner_kind="Job", owner_name="job", start_ns=100 * S, end_ns=120 * S)
    late = PodRecord("ns", "job-y", "uid-y", "n1", ("10.231.0.6",), phase="Failed",
                     start_ns=110 * S, end_ns=140 * S)  # overlaps both: only the gap is its
    idx.apply(nxt.key, nxt, 500 * S)
    idx.apply(job.key, job, 500 * S)
    idx.apply(late.key, late, 500 * S)
    assert idx.resolve(ip, 99 * S) is None
    assert idx.resolve(ip, 110 * S).name == "job-x"  # type: ignore[union-attr]
    assert idx.resolve(ip, 125 * S).name == "job-y"  # type: ignore[union-attr]
    assert idx.resolve(ip, 135 * S).name == "web-1"  # type: ignore[union-attr]
    assert idx.resolve(ip, 10**6 * S).name == "web-1"  # type: ignore[union-attr]
    again = PodRecord("ns", "job-x", "uid-job", "n1", ("10.231.0.6",), phase="Succeeded",
                      start_ns=100 * S, end_ns=120 * S, rv="2")
    idx.apply(again.key, again, 600 * S)  # the same finished pod again: no second interval
    assert len(idx._ips[ip]) == 3


def test_index_short_pod_first_seen_with_its_ip_when_finished() -> None:
    """A pod that runs a second: the kubelet's status updates may go from Pending (no IP)
    straight to Succeeded (with the IP); its traffic still belongs to it (seen on a real node)."""
    idx = WorkloadIndex()
    ip = pack_ip("10.231.0.8")
    pending = PodRecord("ns", "client", "uid-c", "n1", (), phase="Pending", start_ns=100 * S)
    done = PodRecord("ns", "client", "uid-c", "n1", ("10.231.0.8",), phase="Succeeded",
                     start_ns=100 * S, end_ns=103 * S)
    idx.apply(pending.key, pending, 100 * S)
    idx.apply(done.key, done, 104 * S)
    assert idx.resolve(ip, 102 * S).name == "client"  # type: ignore[union-attr]
    assert idx.resolve(ip, 103 * S) is None and idx.resolve(ip, 99 * S) is None


def test_finished_at_in_whole_seconds_ends_the_pod_at_the_end_of_that_second() -> None:
    obj = pod("ns", "client", "10.231.0.8", "n1", phase="Succeeded", start="2026-11-23T00:00:00Z")
    obj["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {
        "exitCode": 0, "startedAt": "2026-11-23T00:00:01Z", "finishedAt": "2026-11-23T00:00:03Z"}}}]
    rec = to_record("pod", obj)
    assert isinstance(rec, PodRecord)
    assert rec.end_ns == rec.start_ns + 4 * S  # [00:00:03, 00:00:04) is when it ended
    idx = WorkloadIndex()
    idx.apply(rec.key, rec, rec.start_ns + 10 * S)
    assert idx.resolve(pack_ip("10.231.0.8"), rec.start_ns + 3 * S + S // 2).name == "client"  # type: ignore[union-attr]


def test_index_services_and_membership() -> None:
    idx = WorkloadIndex()
    for kind, obj in [("pod", pod("ns", "api-0", "10.231.0.7", "n1", owner=("StatefulSet", "api"))),
                      ("service", service("ns", "api", "10.96.0.7")),
                      ("endpointslice", endpointslice("ns", "api", [("api-0", "10.231.0.7")]))]:
        rec = to_record(kind, obj)
        idx.apply(rec.key, rec, 10**18)
    got = idx.resolve(pack_ip("10.231.0.7"), 2 * 10**18)
    assert got == Workload("pod", "api-0", "ns", "n1", "api", "StatefulSet", "api")
    idx.apply("endpointslice/ns/api-abcde", None, 10**18)  # membership changes are seen at once
    assert idx.resolve(pack_ip("10.231.0.7"), 2 * 10**18).service == ""  # type: ignore[union-attr]
    slice_rec = to_record("endpointslice", endpointslice("ns", "api", [("api-0", "10.231.0.7")]))
    idx.apply(slice_rec.key, slice_rec, 10**18)
    assert idx.resolve(pack_ip("10.231.0.7"), 2 * 10**18) == got
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
        pod_rec = to_record("pod", obj)
        idx.apply(pod_rec.key, pod_rec, 10**18)
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
    assert rec.src_workload is not None and rec.dst_workload is not None
    assert rec.src_workload.name == "client-1" and rec.dst_workload.name == "server-1"
    assert rec.src_process == ProcessInfo(4242, "curl", "c0ffee", 7) and rec.dst_process is None
    assert (rec.packets_fwd, rec.packets_rev, rec.tcp_flags) == (4, 3, "FIN,SYN,PSH,ACK")
    assert decode_flow(encode_flow(rec)) == rec
    assert e.commit_offsets() == {0: 8}
    assert isinstance(rec, FlowRecord)


def test_a_revoked_partition_is_forgotten_not_committed() -> None:
    e = Enricher(WorkloadIndex(), ProcIndex(), 10 * S, grace_ns=0)
    t0 = 1_800_000_000 * S
    for partition, offset in ((0, 7), (1, 30)):
        pkts = [Packet(t0 + i * 1000, len(f), len(f), 2, 0, memoryview(f))
                for i, f in enumerate(handshake("10.231.0.1", 40000 + partition, "10.231.0.2", 80))]
        e.add_batch(partition, offset, encode_batch(node=f"n{partition}", seq=1, packets=pkts,
                                                    ifaces={2: "eth0"}))
    assert e.commit_offsets() == {0: 7, 1: 30}  # up to each open flow's first packet
    e.keep_partitions({0})  # partition 1 moved to another instance
    assert e.commit_offsets() == {0: 7}
    [rec] = e.flush()  # partition 1's open flow is the new owner's to count
    assert rec.node == "n0"


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


def _odd_frames() -> list[bytes]:
    """Frames the fast path must hand to parse_l4, and some it must refuse, mixed with plain ones."""
    import socket
    import struct

    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
    plain = tcp_frame("10.0.0.1", 1000, "10.0.0.2", 80, SYN)
    ip_tcp = plain[14:]
    v4opts = bytearray(ip_tcp[:20] + b"\x01\x01\x01\x01" + ip_tcp[20:])
    v4opts[0] = 0x46
    v4opts[2:4] = struct.pack("!H", len(v4opts))
    first_frag = bytearray(plain)
    first_frag[20:22] = b"\x20\x00"  # MF set, offset 0: still has ports
    later_frag = bytearray(plain)
    later_frag[20:22] = b"\x00\x10"  # offset 16: no ports
    bad_doff = bytearray(plain)
    bad_doff[14 + 20 + 12] = 0x40  # TCP header length 16 < 20
    short_total = bytearray(plain)
    short_total[16:18] = b"\x00\x10"
    tcp6 = struct.pack("!HHIIBBHHH", 5000, 443, 1, 1, 5 << 4, SYN, 65535, 0, 0)
    v6 = (struct.pack("!IHBB", 6 << 28, len(tcp6), 6, 64) + socket.inet_pton(socket.AF_INET6, "fd00::1")
          + socket.inet_pton(socket.AF_INET6, "fd00::2") + tcp6)
    icmp = bytearray(udp_frame("10.0.0.1", 1, "10.0.0.2", 2, b"x" * 40))
    icmp[23] = 1
    return [
        plain, udp_frame("10.0.0.1", 53, "10.0.0.3", 5353, b""),  # UDP shorter than the fast window
        udp_frame("10.0.0.3", 5353, "10.0.0.1", 53, b"y" * 100),
        eth + b"\x08\x00" + bytes(v4opts), bytes(first_frag), bytes(later_frag), bytes(bad_doff),
        bytes(short_total), eth + b"\x81\x00\x00\x07" + plain[12:],  # one VLAN tag
        eth + b"\x86\xdd" + v6, bytes(icmp), eth + b"\x08\x06" + b"\x00" * 28,  # ARP
        plain[:40],  # cut short by a snap length
        tcp_frame("10.0.0.2", 80, "10.0.0.1", 1000, SYN | ACK, b"z" * 30),
    ]


@pytest.mark.parametrize("layout", ["records", "tpacket3"])
def test_fast_ingest_agrees_with_parse_l4(layout: str) -> None:
    from enrich._ingest import add_batch, decode_body
    from schemas import decode_batch, encode_block_batch
    from schemas.tpacket import build_block

    frames = _odd_frames() * 3
    t0 = 1_800_000_000 * S
    if layout == "records":
        pkts = [Packet(t0 + i, len(f), len(f) + 4, 2, 0, memoryview(f)) for i, f in enumerate(frames)]
        value = encode_batch(node="n1", seq=1, packets=pkts, ifaces={2: "eth0"})
    else:
        block = bytearray(build_block([(t0 + i, len(f) + 4, 2, 0, f) for i, f in enumerate(frames)]))
        block[48 + 20] |= 0x10  # first frame: the kernel stripped VLAN 7 into tp_vlan_tci
        block[48 + 32] = 7
        value = encode_block_batch(node="n1", seq=1, blocks=[bytes(block)], ifaces={2: "eth0"})
    fast = FlowTable("n1", 10 * S)
    header, raw = decode_body(value)
    # not L4: TCP header length < 20, IP total length < header, ICMP, ARP, cut short
    assert add_batch(fast, header, raw, 7) == (9 * 3, 5 * 3)
    slow = FlowTable("n1", 10 * S)
    for p in decode_batch(value).packets:
        l4 = parse_l4(p.data)
        if l4 is not None:
            slow.add(p.ts_ns, l4, p.origlen, 7)

    def rows(t: FlowTable) -> list[tuple[object, ...]]:
        return sorted(tuple(getattr(f, n) for n in f.__slots__) for f in t.flush())

    expected = rows(slow)
    assert rows(fast) == expected and len(expected) == 4  # tcp, its later fragment, udp, tcp6


def test_fast_ingest_corrupt_body_adds_nothing() -> None:
    from enrich._ingest import add_batch, decode_body
    from schemas import RecordOverrun

    frames = handshake("10.0.0.1", 1, "10.0.0.2", 2)
    pkts = [Packet(i, len(f), len(f), 2, 0, memoryview(f)) for i, f in enumerate(frames)]
    value = encode_batch(node="n1", seq=1, packets=pkts, ifaces={2: "eth0"}, codec="none")
    header, raw = decode_body(value)
    table = FlowTable("n1", 10 * S)
    with pytest.raises(RecordOverrun):
        add_batch(table, header, bytes(raw[:-1]), 0)  # the last record runs past the end
    assert len(table) == 0
    from schemas import encode_block_batch
    from schemas.tpacket import build_block

    block = build_block([(i, len(f), 2, 0, f) for i, f in enumerate(frames)])
    header, raw = decode_body(encode_block_batch(node="n1", seq=1, blocks=[block], ifaces={2: "eth0"}))
    with pytest.raises(RecordOverrun):  # the block announces more frames than it holds
        add_batch(table, header, bytes(raw[:12]) + (9).to_bytes(4, "little") + bytes(raw[16:]), 0)
    assert len(table) == 0


def test_flow_filter_matches_workloads_like_forensics() -> None:
    from enrich.cli import FlowFilter, format_flow

    web = Workload("pod", "web-1", "shop", "n1", "web", "Deployment", "web")
    svc = Workload("service", "db", "billing", "", "db")
    r = FlowRecord("n1", "tcp", "10.231.0.1", 40000, "10.96.0.9", 5432, S, 2 * S, 0,
                   src_workload=web, dst_workload=svc, flags_fwd=SYN)
    assert FlowFilter(namespaces=["billing"]).match(r)  # a ClusterIP counts for its namespace
    assert FlowFilter(pod="^web-").match(r) and not FlowFilter(pod="^db").match(r)  # pods only
    assert not FlowFilter(namespaces=["billing"], pod="^web-").match(r)  # both on the same end
    assert FlowFilter(namespaces=["shop"], pod="^web-", ports=[5432], protos=["tcp"]).match(r)
    assert not FlowFilter(hosts=["10.231.1.0/24"]).match(r) and FlowFilter(hosts=["10.96.0.0/16"]).match(r)
    line = format_flow(r)
    assert "pod/shop/web-1 (Deployment/web) svc=web -> 10.96.0.9:5432 service/billing/db" in line
