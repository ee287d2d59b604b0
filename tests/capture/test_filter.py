"""Run-time capture filters: map updates take effect in the kernel for the very next packet.

In-process: a real TPACKET_V3 ring with the eBPF filter attached, inside a test namespace.
After each ``KernelFilter.apply`` the test sends traffic at once and counts what reached
the ring: filtered packets never arrive (the ring and ``PACKET_STATISTICS`` do not see
them; the filter's reject counter does). A second test drives the same maps through a
``CaptureFilter`` record on ``rawcap.control`` and a running agent.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from capture._filter import C_REJECTED, KernelFilter
from capture._ring import Ring
from rawcap.packet import parse_l4
from rawcap.stack import Stack
from schemas import BatchHeader, block_summary, decode_batch, iter_packets
from schemas.control import CaptureFilter, filter_key
from schemas.topics import CONTROL
from tests.netns import VethPair

from .helpers import PY, RAWCAP, TRAFFIC, Proc, kafka_records

pytestmark = pytest.mark.integration


def _drain(ring: Ring) -> list[tuple[str, int, int]]:
    """(src ip, sport, dport) of every packet in retired blocks, after the block timeout."""
    time.sleep(0.15)
    out: list[tuple[str, int, int]] = []

    def consume(block: memoryview) -> None:
        num, _t0, _t1, blk_len = block_summary(block)
        body = bytes(block[:blk_len])
        header = BatchHeader(node="t", seq=0, count=num, first_ns=0, last_ns=0, ifaces={},
                             body="tpacket3")
        for p in iter_packets(header, body):
            l4 = parse_l4(p.data)
            assert l4 is not None, "non-TCP/UDP packet in the ring"
            out.append((socket.inet_ntop(socket.AF_INET6 if l4.family == 6 else socket.AF_INET,
                                         l4.src), l4.sport, l4.dport))

    ring.take(consume)
    return out


def test_filter_maps_update_at_run_time() -> None:
    with VethPair("rcflt") as net:
        extra_ip = net.a.ip.rsplit(".", 1)[0] + ".3"
        net.a.run("ip", "addr", "add", f"{extra_ip}/24", "dev", net.a.iface)
        kf = KernelFilter()
        try:
            with net.b.entered():
                ring = Ring(ifindex=net.b.ifindex, block_size=1 << 16, block_count=16,
                            block_timeout_ms=20, bpf_fd=kf.fd)
            with net.a.entered():
                s1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s1.bind((net.a.ip, 40001))
                s3 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s3.bind((extra_ip, 40003))
                s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s6.bind((net.a.ip6, 40006))

            def send(port: int, n: int = 5) -> None:
                for _ in range(n):
                    s1.sendto(b"x" * 32, (net.b.ip, port))
                    s3.sendto(b"y" * 32, (net.b.ip, port))
                    s6.sendto(b"z" * 32, (net.b.ip6, port))

            def step(f: CaptureFilter) -> list[tuple[str, int, int]]:
                _drain(ring)
                kf.apply(f)  # ... and traffic goes out immediately after
                send(1111)
                send(2222)
                return _drain(ring)

            got = step(CaptureFilter())
            assert len(got) == 30
            rejected0 = kf.counters()[C_REJECTED]
            ring.read_stats()
            seen_before = ring.stats.packets

            got = step(CaptureFilter(allow_ports=(2222,), version=1))
            assert len(got) == 15 and {d for _, _, d in got} == {2222}
            assert kf.counters()[C_REJECTED] - rejected0 == 15
            # the socket itself never saw the rejected packets
            assert ring.read_stats().packets - seen_before == 15

            got = step(CaptureFilter(deny_ips=(extra_ip,), version=2))
            assert len(got) == 20 and extra_ip not in {s for s, _, _ in got}

            got = step(CaptureFilter(allow_ips=(extra_ip + "/32", net.a.ip6), version=3))
            assert {s for s, _, _ in got} == {extra_ip, net.a.ip6} and len(got) == 20

            got = step(CaptureFilter(deny_ports=(1111,), allow_ips=(net.a.ip.rsplit(".", 1)[0] + ".0/24",),
                                     version=4))
            assert {(s, d) for s, _, d in got} == {(net.a.ip, 2222), (extra_ip, 2222)}

            got = step(CaptureFilter(protocols=("tcp",), version=5))
            assert got == []

            got = step(CaptureFilter(version=6))
            assert len(got) == 30
            assert ring.read_stats().drops == 0
            ring.close()
            for sock in (s1, s3, s6):
                sock.close()
        finally:
            kf.close()


def test_control_topic_drives_the_filter(stack: Stack, tmp_path: Path) -> None:
    """A CaptureFilter record on rawcap.control reaches a running agent's eBPF maps."""
    node = f"flt-{uuid.uuid4().hex[:6]}"
    buf = tmp_path / "buf"
    env = {"RAWCAP_BOOTSTRAP": stack.bootstrap, "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.2s"}
    with VethPair("rcctl") as net:
        srv = Proc([PY, TRAFFIC, "server", "7005"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                    "--node", node, "--buffer-dir", str(buf), "--no-procs"], env=env)
        try:
            cap.wait_for("capture running")
            cap.wait_for("shipper connected", timeout=60)

            def talk(port: str) -> None:
                r = net.b.run(PY, TRAFFIC, "client", net.a.ip, port, "--sizes", "100",
                              "--rounds", "5", "--no-tcp", check=False)
                assert r.returncode == 0, r.stderr

            talk("7005")
            srv2 = Proc([PY, TRAFFIC, "server", "7006"], ns=net.a)
            srv2.wait_for("serving", stdout=True)

            async def publish(f: CaptureFilter, key: str) -> None:
                p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
                await p.start()
                try:
                    await p.send_and_wait(CONTROL, f.encode(), key=key.encode())
                finally:
                    await p.stop()

            # another node's record must not apply; ours must
            asyncio.run(publish(CaptureFilter(allow_ports=(9,), version=70), filter_key("other")))
            asyncio.run(publish(CaptureFilter(deny_ports=(7005,), version=71), filter_key(node)))
            cap.wait_for("filter_version=71", timeout=30)
            talk("7005")  # filtered in the kernel now
            talk("7006")
            srv2.stop()
            assert cap.stop() == 0, cap.text
        finally:
            srv.stop()
            cap.stop()
    assert "filter_version=70" not in cap.text
    ports = []
    for _, value in asyncio.run(kafka_records(stack.bootstrap, node)):
        for p in decode_batch(value).packets:
            l4 = parse_l4(p.data)
            assert l4 is not None
            ports.append(l4.dport if l4.dport != 0 and l4.sport >= 30000 else l4.sport)
    # before the filter: 5 requests + 5 echoes on 7005; after: only 7006 traffic
    assert ports.count(7005) == 10, ports
    assert ports.count(7006) == 10, ports
