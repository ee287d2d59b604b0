"""The flow table on real captured traffic: replay stability, mid-connection start, caps."""

from __future__ import annotations

from pathlib import Path

from dissector import Dissector
from rawcap.packet import parse_l4
from rawcap.pcap import read_capture
from schemas.calls import Call, decode_call, encode_call


def frames(pcap: Path) -> list[tuple[int, bytes]]:
    with pcap.open("rb") as fh:
        return [(r.ts_ns, bytes(r.data)) for recs in read_capture(fh) for r in recs]


def dissect(fr: list[tuple[int, bytes]], **kw: object) -> tuple[list[Call], Dissector]:
    out: list[Call] = []
    d = Dissector(out.append, node="n1", **kw)  # type: ignore[arg-type]
    d.run(fr)
    d.finish()
    return out, d


def test_replay_twice_same_calls(real_pcap: Path) -> None:
    fr = frames(real_pcap)
    a, _ = dissect(fr)
    b, _ = dissect(fr)
    assert a == b and len(a) == 22
    assert [decode_call(encode_call(c)) for c in a] == a


def test_mid_connection_start_yields_later_complete_calls(real_pcap: Path) -> None:
    fr = frames(real_pcap)
    full, _ = dissect(fr)
    keepalive = next(c for c in full if c.proto == "http1" and c.path == "/boom")
    # start the capture just after the first request of the keep-alive connection
    first = next(c for c in full if c.proto == "http1")
    cut = [f for f in fr if f[0] > first.resp_ts_ns]
    part, _d = dissect(cut)
    got = {(c.method, c.path, c.status) for c in part if c.proto == "http1" and c.complete}
    assert (keepalive.method, keepalive.path, keepalive.status) in got
    assert ("GET", "/", 200) not in {(c.method, c.path, c.status) for c in part
                                     if c.src_port == first.src_port}
    assert len(got) >= 9


def test_flow_cap_evicts(real_pcap: Path) -> None:
    fr = frames(real_pcap)
    # every connection opens before any talks: more flows at once than the table holds
    syn = [f for f in fr if (p := parse_l4(f[1])) and p.flags & 0x12 == 0x02]
    rest = [f for f in fr if f not in syn]
    calls, d = dissect(syn + rest, max_flows=2)
    assert d.rstats.flows_evicted >= 8
    assert len(d.order) == 0
    # the two flows that kept their slot still produce their calls
    assert any(c.complete and c.proto in ("http1", "http2", "grpc") for c in calls)


def test_per_flow_buffer_cap_poisons_only_that_flow() -> None:
    """A Redis value that never ends must not grow memory past dissector.maxFlowBytes."""
    import struct

    def tcp(src: int, sport: int, dport: int, seq: int, flags: int, payload: bytes) -> bytes:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0,
                         bytes((10, 0, 0, src)), bytes((10, 0, 0, 9)))
        return (b"\x02" * 12 + b"\x08\x00" + ip
                + struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 1, 0, 0) + payload)

    out: list[Call] = []
    d = Dissector(out.append, max_flow_bytes=64 * 1024)
    d.packet(1, tcp(1, 5000, 6379, 100, 0x02, b""))
    seq = 101
    first = b"*2\r\n$3\r\nSET\r\n$100000000\r\n"
    d.packet(2, tcp(1, 5000, 6379, seq, 0x18, first))
    seq += len(first)
    for i in range(100):  # 140 KB of a 100 MB bulk string
        d.packet(3 + i, tcp(1, 5000, 6379, seq, 0x10, b"x" * 1400))
        seq += 1400
    # another flow on the same table still works
    d.packet(200, tcp(2, 5001, 80, 7, 0x02, b""))
    d.packet(201, tcp(2, 5001, 80, 8, 0x18, b"GET /ok HTTP/1.1\r\n\r\n"))
    flows = {f.ports: f for f in d.order}
    redis = flows[(5000, 6379)]
    assert redis.session.dead and len(redis.session.readers[0].buf) == 0
    assert d.sstats.poisoned_flows == 1
    d.finish()
    assert any(c.path == "/ok" for c in out)
