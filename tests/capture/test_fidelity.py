"""Fidelity: rawcap keeps exactly what tcpdump sees (restricted to TCP/UDP), byte for byte.

Real veth pair in two namespaces (one end with an 802.1Q sub-interface); TCP and UDP over
IPv4, IPv6 and 802.1Q, small and large messages echoed in both directions, plus ICMP that
must not reach rawcap's ring. rawcap and tcpdump capture the same interface at once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rawcap.packet import parse_l4
from tests.netns import VethPair

from .helpers import PY, TRAFFIC, Proc, agent, is_l4, pcap_packets, read_fifo

pytestmark = pytest.mark.integration


def _by_flow(packets: list[bytes]) -> dict[tuple, list[bytes]]:
    flows: dict[tuple, list[bytes]] = {}
    for p in packets:
        l4 = parse_l4(p)
        assert l4 is not None
        flows.setdefault((l4.src, l4.dst, l4.sport, l4.dport, l4.proto), []).append(p)
    return flows


def test_rawcap_equals_tcpdump(tmp_path: Path) -> None:
    with VethPair("rcfid") as net:
        srv = Proc([PY, TRAFFIC, "server", "7000"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        try:
            pcap = tmp_path / "ref.pcap"
            td = Proc(["tcpdump", "-i", net.b.iface, "-s", "0", "-B", "32768", "-n", "-U",
                       "--immediate-mode", "-w", str(pcap)], ns=net.b)
            td.wait_for("listening on")
            cap = agent(net.b, "--iface", net.b.iface, "--node", "fid", "--no-kafka",
                        "--buffer-dir", str(tmp_path / "buf"))
            # the default interface set ("any": all but lo and bridges) keeps each packet once
            cap_any = agent(net.b, "--node", "fidany", "--no-kafka",
                            "--buffer-dir", str(tmp_path / "buf"))
            net.b.run(PY, TRAFFIC, "icmp", net.a.ip, "3")  # ICMP: tcpdump only
            sizes = "1,64,600,1400,4000"
            r = net.b.run(PY, TRAFFIC, "client", net.a.ip, net.a.ip6, "7000", "--sizes", sizes,
                          "--rounds", "2", check=False)
            assert r.returncode == 0, r.stderr
            # 802.1Q-tagged UDP both ways (this kernel has no VLAN devices: raw frames)
            net.a.run(PY, TRAFFIC, "vlan", net.a.iface, "10")
            net.b.run(PY, TRAFFIC, "vlan", net.b.iface, "10")
            # UDP that fragments (IPv4 fragments are UDP to tcpdump as well)
            r = net.b.run(PY, TRAFFIC, "client", net.a.ip, "7000", "--sizes", "3000", "--no-tcp")
            assert r.returncode == 0, r.stderr
            assert cap.stop() == 0, cap.text
            assert cap_any.stop() == 0, cap_any.text
            td.stop()
        finally:
            srv.stop()
        summary = cap.summary()

    ref_all = pcap_packets(pcap)
    ref = [p for p in ref_all if is_l4(p)]
    assert len(ref_all) > len(ref), "the reference should also hold non-TCP/UDP (ICMP) packets"
    # the reference really covers what the criterion asks for: TCP and UDP, IPv4 and IPv6,
    # small and large frames
    kinds = {(parse_l4(p).proto, parse_l4(p).family) for p in ref}  # type: ignore[union-attr]
    assert kinds >= {(6, 4), (6, 6), (17, 4), (17, 6)}, kinds
    assert min(map(len, ref)) < 80 and max(map(len, ref)) >= 1400
    batches = read_fifo(tmp_path / "buf" / "fid")
    got = [bytes(p.data) for b in batches for p in b.packets]
    assert all(is_l4(p) for p in got), "a non-TCP/UDP packet reached rawcap's ring"
    assert len(got) > 200
    missing = Counter(ref) - Counter(got)
    extra = Counter(got) - Counter(ref)
    assert len(got) == len(ref), (f"rawcap {len(got)} packets, tcpdump {len(ref)}; missing "
                                  f"{[p[:40].hex() for p in missing]} extra {[p[:40].hex() for p in extra]}")
    assert Counter(got) == Counter(ref)
    # Packets handled on different CPUs at the same moment (a request leaving and another
    # echo arriving) may reach two packet sockets in either order; within one flow and
    # direction the order is the wire order and must match.
    assert _by_flow(got) == _by_flow(ref), "same packets, different order within a flow"
    # VLAN-tagged frames are kept with their tag, both directions are present
    assert any(p[12:14] == b"\x81\x00" for p in got)
    pkttypes = {p.pkttype for b in batches for p in b.packets}
    assert {0, 4} <= pkttypes  # PACKET_HOST and PACKET_OUTGOING
    # batch sequence numbers 1..n without gaps, counts consistent with the summary
    assert [b.header.seq for b in batches] == list(range(1, len(batches) + 1))
    assert int(summary["packets"]) == len(got)
    assert summary["kernel_drops"] == "0"
    got_any = [bytes(p.data) for b in read_fifo(tmp_path / "buf" / "fidany") for p in b.packets]
    assert Counter(got_any) == Counter(ref), "--iface any (default) differs from tcpdump"
