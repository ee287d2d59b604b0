"""``--namespace``/``--pod`` and workload comments in the forensics commands, against the real
private stack: Kubernetes objects on ``rawcap.k8s`` (as ``rawcap k8s-watch`` writes them),
packet batches on ``rawcap.packets``, the real CLI, tshark/capinfos to read the files back.

The scenario (unique names and addresses per session, node ``N``)::

    IP1  shop/web-U (StatefulSet/web)  from T-60s, deleted at T-30s
    IP1  billing/batch-U (Job/batch)   from T-20s  (the address is reused)
    IP2  shop/db-U                     from T-120s
    IP9  nobody

    A  T-40s  handshake IP1:40001 -> IP2:5432   web -> db       7 packets
    B  T-39s  handshake IP9:40002 -> IP9b:80    nobody          7 packets
    C  T-10s  handshake IP1:40003 -> IP2:5432   batch -> db     7 packets
    D  T-9s   udp IP1:5353 -> IP9:53            batch -> nobody 1 packet
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from rawcap.config import Config
from rawcap.kafka import ensure_topics, producer_kwargs
from rawcap.timeparse import format_ns
from schemas import Packet, encode_batch, topics
from schemas.k8s import PodRecord, encode_k8s

from ..enrich.frames import handshake, udp_frame
from .helpers import rawcap, tshark_rows, wireshark_warnings

pytestmark = pytest.mark.integration
S = 1_000_000_000


@dataclass(frozen=True)
class Scene:
    node: str
    shop: str
    billing: str
    web: str
    batch: str
    db: str
    ip1: str
    ip2: str
    ip9: str
    lo: str  # --from
    hi: str  # --to

    def window(self) -> list[str]:
        return ["--node", self.node, "--from", self.lo, "--to", self.hi]


@pytest.fixture(scope="module")
async def scene(make_config: Callable[..., Config]) -> Scene:
    cfg = make_config()
    await ensure_topics(cfg)
    u = uuid.uuid4().hex[:6]
    net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    sc = Scene(
        node=f"wlf-{u}", shop=f"shop-{u}", billing=f"billing-{u}", web=f"web-{u}", batch=f"batch-{u}",
        db=f"db-{u}", ip1=f"{net}.1", ip2=f"{net}.2", ip9=f"{net}.9", lo="", hi="",
    )
    now = time.time_ns()
    web = PodRecord(sc.shop, sc.web, f"u-w-{u}", sc.node, (sc.ip1,), start_ns=now - 60 * S,
                    owner_kind="StatefulSet", owner_name="web")
    batch = PodRecord(sc.billing, sc.batch, f"u-b-{u}", sc.node, (sc.ip1,), start_ns=now - 20 * S,
                      owner_kind="Job", owner_name="batch")
    db = PodRecord(sc.shop, sc.db, f"u-d-{u}", sc.node, (sc.ip2,), start_ns=now - 120 * S)
    k8s = [(db.key, encode_k8s(db), now - 120 * S), (web.key, encode_k8s(web), now - 60 * S),
           (web.key, None, now - 30 * S), (batch.key, encode_k8s(batch), now - 20 * S)]
    flows = [
        (now - 40 * S, handshake(sc.ip1, 40001, sc.ip2, 5432)),
        (now - 39 * S, handshake(sc.ip9, 40002, f"{net}.10", 80)),
        (now - 10 * S, handshake(sc.ip1, 40003, sc.ip2, 5432)),
        (now - 9 * S, [udp_frame(sc.ip1, 5353, sc.ip9, 53)]),
    ]
    producer = AIOKafkaProducer(**producer_kwargs(cfg))
    await producer.start()
    try:
        for key, value, ts in k8s:
            await producer.send_and_wait(topics.K8S, value, key=key.encode(), timestamp_ms=ts // 1_000_000)
        for seq, (t0, frames) in enumerate(flows, start=1):
            pkts = [Packet(t0 + i * 1000, len(f), len(f), 2, 0, memoryview(f)) for i, f in enumerate(frames)]
            value = encode_batch(node=sc.node, seq=seq, packets=pkts, ifaces={2: "eth0"})
            await producer.send_and_wait(topics.PACKETS, value, key=sc.node.encode(),
                                         timestamp_ms=t0 // 1_000_000)
    finally:
        await producer.stop()
    return Scene(**{**sc.__dict__, "lo": format_ns(now - 50 * S), "hi": format_ns(now)})


def _ok(p: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert p.returncode == 0, p.stderr.decode()
    return p


def _client_ports(rows: list[tuple[str, ...]]) -> list[int]:
    """The client port of each (srcport, dstport) row (servers are 5432, 80 and 53)."""
    return [int(s) if int(s) not in (5432, 80, 53) else int(d) for s, d in rows]


def test_consume_namespace_and_pod_resolve_at_packet_time(scene: Scene, kenv: dict[str, str]) -> None:
    def ports(*flt: str) -> list[int]:
        p = _ok(rawcap("consume", *scene.window(), "--json", *flt, env=kenv))
        docs = [json.loads(line) for line in p.stdout.splitlines()]
        return [d["sport"] if d["sport"] not in (5432, 80, 53) else d["dport"] for d in docs]

    # IP1 is web (shop) for flow A and batch (billing) for C and D: attribution is by time.
    assert ports("--pod", "^web-") == [40001] * 7
    assert ports("--pod", f"^{scene.batch}$") == [40003] * 7 + [5353]
    assert ports("--namespace", scene.billing) == [40003] * 7 + [5353]
    # db (shop) is the other end of A and C: either end matches
    assert ports("--namespace", scene.shop) == [40001] * 7 + [40003] * 7
    # several values are alternatives; --namespace and --pod must hold for the same end
    assert ports("--namespace", scene.billing, "--namespace", scene.shop) == \
        [40001] * 7 + [40003] * 7 + [5353]
    assert ports("--namespace", scene.shop, "--pod", "^batch-") == []
    assert ports("--namespace", scene.shop, "--pod", "^db-", "--pod", "^nope") == [40001] * 7 + [40003] * 7
    # ANDed with the other filters
    assert ports("--namespace", scene.billing, "--proto", "udp") == [5353]
    assert ports("--namespace", scene.shop, "tcp[tcpflags] & tcp-syn != 0") == [40001] * 2 + [40003] * 2
    assert ports("--namespace", "no-such-namespace") == []
    assert len(ports()) == 22


def test_consume_shows_workloads(scene: Scene, kenv: dict[str, str]) -> None:
    plain = _ok(rawcap("consume", *scene.window(), env=kenv)).stdout.decode().splitlines()
    assert len(plain) == 22 and not any("src=" in line for line in plain)
    shown = _ok(rawcap("consume", *scene.window(), "--workloads", env=kenv)).stdout.decode().splitlines()
    assert len(shown) == 22
    web, db, batch = (f"pod/{scene.shop}/{scene.web} (StatefulSet/web)", f"pod/{scene.shop}/{scene.db}",
                      f"pod/{scene.billing}/{scene.batch} (Job/batch)")
    assert shown[0].endswith(f":5432 tcp len=54 [S] src={web} dst={db}"), shown[0]
    assert shown[1].endswith(f"[S.] src={db} dst={web}"), shown[1]
    assert not any("src=" in line for line in shown[7:14])  # nobody's flow: unchanged lines
    assert shown[14].endswith(f"[S] src={batch} dst={db}"), shown[14]
    assert shown[21].endswith(f"udp len={len(udp_frame(scene.ip1, 1, scene.ip9, 1))} src={batch} dst=-")
    # --json with a filter: the workloads are shown (they were loaded anyway), null when unknown
    p = _ok(rawcap("consume", *scene.window(), "--json", "--proto", "udp", "--pod", "^batch-", env=kenv))
    (doc,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert doc["src_workload"]["name"] == scene.batch and doc["src_workload"]["namespace"] == scene.billing
    assert doc["src_workload"]["owner_kind"] == "Job" and doc["dst_workload"] is None


def test_pcap_export_pod_filter_and_workload_comments(
    scene: Scene, kenv: dict[str, str], tmp_path: Path
) -> None:
    web = f"pod/{scene.shop}/{scene.web} (StatefulSet/web)"
    db = f"pod/{scene.shop}/{scene.db}"
    batch = f"pod/{scene.billing}/{scene.batch} (Job/batch)"
    node = f"node={scene.node}"

    out = tmp_path / "web.pcapng"
    _ok(rawcap("pcap", "export", *scene.window(), "--pod", "^web-", "-o", str(out), env=kenv))
    assert wireshark_warnings(out) == []
    rows = tshark_rows(out, "tcp.srcport", "tcp.dstport", "frame.comment")
    assert _client_ports([r[:2] for r in rows]) == [40001] * 7 and {r[2] for r in rows} == {""}

    # every packet commented (whole batches: the per-packet path of the unfiltered export)
    every = tmp_path / "all.pcapng"
    _ok(rawcap("pcap", "export", *scene.window(), "--comment-workload", "-o", str(every), env=kenv))
    assert wireshark_warnings(every) == []
    comments = [r[0] for r in tshark_rows(every, "frame.comment")]
    assert len(comments) == 22
    assert comments[0] == f"{node} src={web} dst={db}"
    assert comments[1] == f"{node} src={db} dst={web}"
    assert comments[7:14] == [node] * 7  # neither end known: the node alone
    assert comments[14] == f"{node} src={batch} dst={db}"
    assert comments[21] == f"{node} src={batch} dst=-"
    info = subprocess.run(["capinfos", "-c", str(every)], capture_output=True, text=True, check=True)
    assert "22" in info.stdout.split("Number of packets")[1].splitlines()[0]

    # filtered (the packet-list path) and with --comment-node as well: one comment per packet
    both = tmp_path / "batch.pcapng"
    _ok(rawcap("pcap", "export", *scene.window(), "--pod", "^batch-", "--comment-workload",
               "--comment-node", "-o", str(both), env=kenv))
    assert wireshark_warnings(both) == []
    rows = tshark_rows(both, "frame.comment", "udp.srcport")
    assert len(rows) == 8 and rows[0][0] == f"{node} src={batch} dst={db}"
    assert rows[7] == (f"{node} src={batch} dst=-", "5353")

    # --comment-node alone is unchanged
    plain = tmp_path / "node.pcapng"
    _ok(rawcap("pcap", "export", *scene.window(), "--comment-node", "--pod", "^web-", "-o", str(plain),
               env=kenv))
    assert [r[0] for r in tshark_rows(plain, "frame.comment")] == [node] * 7


def test_snapshot_records_applies_and_keeps_workload_filters(
    scene: Scene, kenv: dict[str, str], tmp_path: Path
) -> None:
    name = f"wl-{scene.node}"
    p = _ok(rawcap("snapshot", "create", *scene.window(), "--name", name, "--namespace", scene.billing,
                   "--json", env=kenv))
    manifest = json.loads(p.stdout)
    assert manifest["filters"]["namespaces"] == [scene.billing] and manifest["filters"]["pods"] == []
    assert manifest["nodes"][scene.node]["packets"] == 8  # what an export will yield
    assert manifest["k8s"]["path"] == "k8s.msgpack" and manifest["k8s"]["records"] >= 4
    shown = json.loads(_ok(rawcap("snapshot", "show", name, "--json", env=kenv)).stdout)
    assert shown["filters"] == manifest["filters"]

    # The export re-applies the filter with the snapshot's own copy of rawcap.k8s: it works
    # with Kafka gone (a bootstrap nobody listens on).
    offline = {**kenv, "RAWCAP_BOOTSTRAP": "127.0.0.1:9"}
    out = tmp_path / "snap.pcapng"
    _ok(rawcap("snapshot", "export", name, "--comment-workload", "-o", str(out), env=offline, timeout=60))
    assert wireshark_warnings(out) == []
    rows = tshark_rows(out, "tcp.srcport", "tcp.dstport", "udp.srcport", "frame.comment")
    assert _client_ports([r[:2] for r in rows[:7]]) == [40003] * 7 and rows[7][2] == "5353"
    assert all(f"src=pod/{scene.billing}/{scene.batch}" in r[3] or f"dst=pod/{scene.billing}/" in r[3]
               for r in rows)
    # ... and narrowed further on export (ANDed with the stored filter)
    p = _ok(rawcap("consume", "--source", f"snapshot:{name}", "--pod", "^web-", env=offline, timeout=60))
    assert p.stdout == b""
    p = _ok(rawcap("consume", "--source", f"snapshot:{name}", "--proto", "udp", env=offline, timeout=60))
    assert len(p.stdout.splitlines()) == 1

    assert _ok(rawcap("snapshot", "verify", name, env=kenv)).stdout.decode().strip() == f"{name}: ok"
    copy = Path(kenv["RAWCAP_SNAPSHOTS_URL"]) / name / "k8s.msgpack"
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    bad = rawcap("snapshot", "verify", name, env=kenv)
    assert bad.returncode == 2 and b"changed: k8s.msgpack" in bad.stdout
    bad = rawcap("snapshot", "export", name, "-o", str(tmp_path / "x.pcapng"), env=offline, timeout=60)
    assert bad.returncode == 2 and b"k8s.msgpack fails its sha256 check" in bad.stderr

    # a snapshot without workload filters keeps no copy
    plain = json.loads(_ok(rawcap("snapshot", "create", *scene.window(), "--name", name + "-p", "--json",
                                  env=kenv)).stdout)
    assert plain["k8s"] is None and plain["nodes"][scene.node]["packets"] == 22
    assert plain["filters"]["namespaces"] == [] and plain["filters"]["pods"] == []
