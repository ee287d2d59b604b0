"""A broker dies mid-flight: ``kill -9`` of the leader of the partition a capturing node writes
to, while it ships 50k packets/s, on the session's 3-broker secured cluster.

Real everything: trafgen sends UDP frames over a veth pair and an HTTP client makes requests
beside it; ``rawcap capture`` (as the capture user) ships them while ``rawcap archive``,
``rawcap dissect --follow`` and ``rawcap enrich`` (each as its own user) consume; the leader
is killed with SIGKILL three seconds into the traffic and restarted once the traffic is over.

- Every batch arrives in Kafka exactly once (per-node sequence numbers 1..N, no gap, no
  repeat); the capture kept taking packets through the failover (no pause between batches);
  its metrics show the leader move (``rawcap_capture_ship_leader*``).
- The archive holds every batch exactly once (data objects and index).
- ``dissect --follow`` stores every HTTP call (the local store ignores a repeat, so exactly
  the requests made); ``enrich`` publishes a flow for every connection (at least once: a
  flow may be published twice, docs/capacity.md) and its lag gauge comes back to 0.
- The restarted broker catches up: back in the partition's ISR.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from obstore.store import LocalStore

from rawcap.kafka import admin_kwargs, make_consumer
from rawcap.stack import Stack
from rawcap.stack._proc import free_port
from schemas import decode_header
from schemas.topics import PACKETS
from tests.archiver.helpers import Contents
from tests.capture.helpers import PY, RAWCAP, Proc
from tests.netns import VethPair

pytestmark = pytest.mark.integration

RATE, SECONDS, FRAME = 50_000, 10, 200
HTTP_PORT, REQUESTS = 8090, 30
_CLIENT = (
    "import sys, time, urllib.request\n"
    "for i in range(int(sys.argv[2])):\n"
    f"    urllib.request.urlopen(f'http://{{sys.argv[1]}}:{HTTP_PORT}/?i={{i}}', timeout=30).read()\n"
    "    time.sleep(0.3)\n"
)


async def _packets_partitions(stack: Stack) -> dict[int, dict[str, Any]]:
    """rawcap.packets' partitions as the cluster describes them (leader, replicas, ISR)."""
    admin = AIOKafkaAdminClient(**admin_kwargs(stack.config()))
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([PACKETS])
    finally:
        await admin.close()
    return {p["partition"]: p for p in topic["partitions"]}


async def _partition_state(stack: Stack, partition: int) -> tuple[int, list[int]]:
    part = (await _packets_partitions(stack))[partition]
    return int(part["leader"]), sorted(part["isr"])


async def _node_batches(stack: Stack, partition: int, node: str) -> list[tuple[int, int, int, int]]:
    """(seq, packets, first_ns, last_ns) of every batch of ``node`` in Kafka, in offset order."""
    c = make_consumer(stack.config(), max_partition_fetch_bytes=16 << 20)
    await c.start()
    try:
        tp = TopicPartition(PACKETS, partition)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        end = (await c.end_offsets([tp]))[tp]
        out = []
        while await c.position(tp) < end:
            got = await c.getmany(tp, timeout_ms=2000, max_records=2000)
            for r in got.get(tp, []):
                if r.key == node.encode() and r.value:
                    h, _ = decode_header(r.value)
                    out.append((h.seq, h.count, h.first_ns, h.last_ns))
        return out
    finally:
        await c.stop()


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name}(?:_total)?{{[^}}]*}} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _live_calls(db: Path, node: str) -> int:
    if not db.exists():
        return 0
    got = subprocess.run([RAWCAP, "calls", "--db", str(db), "--node", node, "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    return len(got.stdout.splitlines()) if got.returncode == 0 else 0


def _flow_ports(stack: Stack, node: str) -> set[int]:
    """Client ports of the HTTP connections that have a flow record of ``node``."""
    got = subprocess.run([RAWCAP, "--config", str(stack.service_config("forensics")), "flows",
                          "--node", node, "--port", str(HTTP_PORT), "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    out = set()
    for line in got.stdout.splitlines():
        f = json.loads(line)
        out.add(f["sport"] if f["dport"] == HTTP_PORT else f["dport"])
    return out


def _trafgen_conf(net: VethPair) -> str:
    mac_a = net.a.run("cat", f"/sys/class/net/{net.a.iface}/address").stdout.strip()
    mac_b = net.b.run("cat", f"/sys/class/net/{net.b.iface}/address").stdout.strip()
    return (f"{{ eth(da={mac_b}, sa={mac_a}, type=0x0800), "
            f"ipv4(saddr={net.a.ip}, daddr={net.b.ip}, proto=17, ttl=64), "
            f"udp(sport=40000, dport=5001), drnd({FRAME - 42}) }}\n")


@pytest.mark.timeout(1200)
async def test_leader_killed_mid_flight_loses_and_repeats_nothing(cluster: Stack, tmp_path: Path) -> None:
    node = f"failover-{uuid.uuid4().hex[:6]}"
    partitions = sorted(await _packets_partitions(cluster))
    partition = DefaultPartitioner()(node.encode(), partitions, partitions)
    leader, isr = await _partition_state(cluster, partition)
    assert leader in (1, 2, 3) and isr == [1, 2, 3]

    metrics_port, enrich_port = free_port(), free_port()
    live_db = tmp_path / "live.db"
    archive = tmp_path / "archive"
    archive.mkdir()
    with VethPair("rcfo") as net:
        conf = tmp_path / "gen.cfg"
        conf.write_text(_trafgen_conf(net))
        sink_argv = net.b.cmd([sys.executable, "-c", "import socket, time; s = socket.socket("
                               "socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 5001)); time.sleep(1e6)"])
        sink = subprocess.Popen(sink_argv)  # noqa: ASYNC220 (a background process the test owns)
        cap = Proc([RAWCAP, "--config", str(cluster.service_config("capture")), "capture",
                    "--netns", net.b.name, "--iface", net.b.iface, "--node", node,
                    "--buffer-dir", str(tmp_path / "buf"), "--metrics-port", str(metrics_port),
                    "--no-procs"],
                   env={"RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.2s", "RAWCAP_CAPTURE_RING_BLOCK_COUNT": "32"})
        arc = Proc([RAWCAP, "--config", str(cluster.service_config("archive")), "archive",
                    "--url", f"file://{archive}", "--flush-interval", "2s", "--object-size", "4Mi"])
        dis = Proc([RAWCAP, "--config", str(cluster.service_config("dissect")), "dissect",
                    "--follow", "--quiet", "--no-k8s", "--db", str(live_db)],
                   env={"RAWCAP_TAP_CAPTURE_STOP_AFTER": "0"})
        enr = Proc([RAWCAP, "--config", str(cluster.service_config("enrich")), "enrich"],
                   env={"RAWCAP_ENRICH_FLOW_INTERVAL": "1s", "RAWCAP_ENRICH_GRACE": "500ms",
                        "RAWCAP_METRICS_PORT": str(enrich_port)})
        srv = Proc([PY, "-m", "http.server", str(HTTP_PORT), "--bind", "0.0.0.0"], ns=net.a)
        client: Proc | None = None
        try:
            await anyio.to_thread.run_sync(lambda: cap.wait_for("shipper connected", 120))
            await anyio.to_thread.run_sync(lambda: arc.wait_for("assigned partitions", 120))
            client = Proc([PY, "-c", _CLIENT, net.a.ip, str(REQUESTS)], ns=net.b)
            gen_argv = net.a.cmd(["trafgen", "-o", net.a.iface, "-i", str(conf), "-n",
                                  str(RATE * SECONDS), "-P", "1", "-q", "-C", "-Q", "-b", f"{RATE}pps"])
            gen = subprocess.Popen(gen_argv, stdout=subprocess.DEVNULL,  # noqa: ASYNC220 (waited in a thread)
                                   stderr=subprocess.DEVNULL)
            await anyio.sleep(3)
            killed_at = time.time_ns()
            assert cluster.kill_broker(leader), f"broker {leader} was not running"
            # 10 s at 50k pps; far longer only on a machine whose cores are taken by others
            assert await anyio.to_thread.run_sync(gen.wait, 400) == 0
            assert await anyio.to_thread.run_sync(client.p.wait, 120) == 0, client.text
            sent = RATE * SECONDS

            # the capture drains its backlog to the new leader
            with anyio.fail_after(120):
                while _metric(metrics_port, "rawcap_capture_ship_lag_batches") > 0:  # noqa: ASYNC110
                    await anyio.sleep(0.5)
            new_leader = int(_metric(metrics_port, "rawcap_capture_ship_leader"))
            changes = _metric(metrics_port, "rawcap_capture_ship_leader_changes")

            # the killed broker comes back (a JVM start) and catches up (back in the ISR)
            await anyio.to_thread.run_sync(cluster.start_kafka)
            answered_at = time.monotonic()
            with anyio.fail_after(120):
                while (await _partition_state(cluster, partition))[1] != [1, 2, 3]:  # noqa: ASYNC110
                    await anyio.sleep(1)
            catch_up_s = time.monotonic() - answered_at

            # every call dissected, every connection's flow published, the group caught up
            with anyio.fail_after(240):
                while (calls := await anyio.to_thread.run_sync(_live_calls, live_db, node)) < REQUESTS:  # noqa: ASYNC110
                    await anyio.sleep(1)
            with anyio.fail_after(240):
                while len(ports := await anyio.to_thread.run_sync(_flow_ports, cluster, node)) < REQUESTS:  # noqa: ASYNC110
                    await anyio.sleep(1)
            with anyio.fail_after(120):
                while _metric(enrich_port, "rawcap_consumer_lag_total_records") > 0:  # noqa: ASYNC110
                    await anyio.sleep(1)
        finally:
            cap_rc = cap.stop()
            sink.kill()
            sink.wait()
            srv.stop()
            if client is not None:
                client.stop()
            dis_rc, enr_rc = dis.stop(), enr.stop()
            await anyio.sleep(3)  # > the archive's flush interval
            arc_rc = arc.stop()
            await anyio.to_thread.run_sync(cluster.start_kafka)  # whatever happened above

    assert cap_rc == 0, cap.text
    assert arc_rc == 0, arc.text
    assert (dis_rc, enr_rc) == (0, 0), dis.text + enr.text
    assert calls == REQUESTS, "dissect --follow stored a call more or less than once"
    assert len(ports) == REQUESTS, f"{len(ports)} connections have flows, {REQUESTS} were made"
    summary = cap.summary()
    batches = await _node_batches(cluster, partition, node)
    seqs = [b[0] for b in batches]
    repeated = [s for s, n in collections.Counter(seqs).items() if n > 1]
    assert not repeated, f"batches in Kafka twice: {repeated[:20]}"
    assert seqs == list(range(1, len(seqs) + 1)), "a batch is missing or out of order"
    assert len(seqs) == int(summary["batches"]) and summary["unshipped"] == "0", (len(seqs), summary)
    packets = sum(b[1] for b in batches)
    drops = int(summary.get("kernel_drops", "0"))
    assert packets + drops >= sent, (packets, drops, sent)
    assert drops <= sent * 0.01, f"the capture dropped {drops} of {sent} packets"
    # capture kept taking packets across the kill: no pause of a second between batches
    traffic = [b for b in batches if b[3] >= killed_at - 2 * 10**9]
    gaps = [(b[2] - a[3]) / 1e9 for a, b in itertools.pairwise(traffic)]
    assert traffic and max(gaps) < 1.0, f"capture paused {max(gaps):.2f} s around the kill"
    assert changes >= 1 and new_leader != leader, (leader, new_leader, changes)
    assert catch_up_s < 120
    Contents(LocalStore(str(archive))).check_exactly_once((node, s) for s in seqs)
