"""Workload names on calls, against the real private stack: ``rawcap.k8s`` records for a
client and a server pod (different namespaces) and a service, HTTP exchanges between their
addresses on ``rawcap.packets``, then ``rawcap dissect`` (range, ``--follow``, ``--pcap``)
and ``rawcap calls --namespace/--pod``. The client's IP is handed to another pod halfway:
each call must be named as of its own request time."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dissector._names import CallNamer
from dissector._run import CallOutput
from dissector._workloads import CallFilter
from rawcap.config import Config
from rawcap.kafka import ensure_topics, producer_kwargs
from rawcap.pcap import PcapWriter
from rawcap.timeparse import format_ns
from rawcap.workloads import Workloads
from schemas import topics
from schemas.calls import Call, decode_calls
from schemas.errors import ConfigError
from schemas.k8s import K8sRecord, PodRecord, ServiceRecord, encode_k8s
from tests.archiver.helpers import precommit_end

from .test_kafka import RAWCAP, cli, produce

S = 1_000_000_000
NAMES = ("src_workload", "src_namespace", "dst_workload", "dst_namespace")
Frames = list[tuple[int, bytes]]


def _tcp(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
         payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + payload


def exchange(client: str, cport: int, server: str, sport: int, t0: int, path: str,
             status: int) -> Frames:
    """One HTTP/1.1 request/response on its own connection (handshake to FIN), 1 ms apart."""
    req = f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode()
    resp = f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode()
    c, s = 1000, 5000
    fr = [
        _tcp(client, cport, server, sport, c, 0, 0x02),
        _tcp(server, sport, client, cport, s, c + 1, 0x12),
        _tcp(client, cport, server, sport, c + 1, s + 1, 0x10),
        _tcp(client, cport, server, sport, c + 1, s + 1, 0x18, req),
        _tcp(server, sport, client, cport, s + 1, c + 1 + len(req), 0x18, resp),
        _tcp(client, cport, server, sport, c + 1 + len(req), s + 1 + len(resp), 0x11),
        _tcp(server, sport, client, cport, s + 1 + len(resp), c + 2 + len(req), 0x11),
    ]
    return [(t0 + i * 1_000_000, f) for i, f in enumerate(fr)]


async def publish_k8s(cfg: Config, records: Sequence[tuple[str, K8sRecord | None, int]]) -> None:
    """(key, record or None for a tombstone, Kafka timestamp in ns) onto rawcap.k8s."""
    await ensure_topics(cfg)
    producer = AIOKafkaProducer(**producer_kwargs(cfg))
    await producer.start()
    try:
        for key, rec, ts in records:
            await producer.send_and_wait(topics.K8S, None if rec is None else encode_k8s(rec),
                                         key=key.encode(), timestamp_ms=ts // 1_000_000)
    finally:
        await producer.stop()


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines()]


def names(c: dict[str, Any]) -> tuple[str, ...]:
    return tuple(c[n] for n in NAMES)


class Cluster:
    """Unique names and addresses per test, so records of other tests never interfere."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:6]
        net = f"10.{random.randint(200, 250)}.{random.randint(1, 250)}"
        self.client, self.server, self.vip, self.stranger = (f"{net}.{h}" for h in (10, 20, 30, 40))
        self.shop, self.billing, self.jobs = (f"{n}-{self.id}" for n in ("shop", "billing", "jobs"))
        self.web, self.api, self.batch, self.front = (
            f"{n}-{self.id}" for n in ("web", "api", "batch", "front"))
        self.node = f"wl-{self.id}"


@pytest.fixture(scope="module")
def replay(make_config: Callable[..., Config], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Config, Cluster, Frames, str, str, Path]:
    """The cluster's history on rawcap.k8s, five calls on rawcap.packets, the range dissected
    once with --json into a store; returns (cfg, cluster, frames, lo, hi, db)."""
    cfg = make_config()
    k = Cluster()
    now = time.time_ns()
    web = PodRecord(k.shop, k.web, f"u-web-{k.id}", k.node, (k.client,), start_ns=now - 120 * S,
                    owner_kind="Deployment", owner_name="web")
    api = PodRecord(k.billing, k.api, f"u-api-{k.id}", k.node, (k.server,), start_ns=now - 120 * S)
    front = ServiceRecord(k.billing, k.front, f"u-front-{k.id}", (k.vip,), start_ns=now - 120 * S)
    batch = PodRecord(k.jobs, k.batch, f"u-batch-{k.id}", k.node, (k.client,),
                      start_ns=now - 40 * S, owner_kind="Job", owner_name="batch")
    history: list[tuple[str, K8sRecord | None, int]] = [
        (web.key, web, now - 120 * S), (api.key, api, now - 120 * S),
        (front.key, front, now - 120 * S),
        (web.key, None, now - 50 * S),  # web deleted: the client IP is free for 10 s
        (batch.key, batch, now - 40 * S),  # ... then handed to another pod
    ]
    anyio.run(publish_k8s, cfg, history)
    fr = (exchange(k.client, 40001, k.server, 8080, now - 90 * S, "/old", 200)
          + exchange(k.client, 40002, k.vip, 80, now - 80 * S, "/svc", 200)
          + exchange(k.client, 40003, k.server, 8080, now - 45 * S, "/between", 404)
          + exchange(k.client, 40004, k.server, 8080, now - 30 * S, "/new", 201)
          + exchange(k.stranger, 40005, k.server, 8080, now - 20 * S, "/stranger", 200))
    anyio.run(produce, cfg, k.node, fr, 7)
    lo, hi = format_ns(now - 100 * S), format_ns(now - 10 * S)
    db = tmp_path_factory.mktemp("wl") / "calls.db"
    r = cli(cfg, "dissect", "--from", lo, "--to", hi, "--node", k.node, "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    (db.parent / "dissect.jsonl").write_text(r.stdout)
    return cfg, k, fr, lo, hi, db


def expected(k: Cluster) -> dict[str, tuple[str, ...]]:
    """path -> (src_workload, src_namespace, dst_workload, dst_namespace)."""
    return {
        "/old": (k.web, k.shop, k.api, k.billing),
        "/svc": (k.web, k.shop, f"service/{k.front}", k.billing),
        "/between": ("", "", k.api, k.billing),  # after web's delete, before batch started
        "/new": (k.batch, k.jobs, k.api, k.billing),  # the same client IP, its new owner
        "/stranger": ("", "", k.api, k.billing),
    }


def test_range_replay_names_calls_as_of_their_time(replay: Any) -> None:
    cfg, k, _fr, lo, hi, db = replay
    calls = jsonl((db.parent / "dissect.jsonl").read_text())
    assert [c["path"] for c in calls] == ["/old", "/svc", "/between", "/new", "/stranger"]
    assert all(c["complete"] and c["node"] == k.node for c in calls)
    assert {c["path"]: names(c) for c in calls} == expected(k)

    # the records produced to rawcap.calls carry the names too
    async def published() -> list[Call]:
        consumer = AIOKafkaConsumer(topics.CALLS, bootstrap_servers=cfg.get("kafka.bootstrap"),
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            out: list[Call] = []
            with anyio.move_on_after(30):
                while len(out) < 5:
                    got = await consumer.getmany(timeout_ms=1000, max_records=1000)
                    out += [c for recs in got.values() for r in recs
                            if r.key == k.node.encode() for c in decode_calls(r.value)]
            return out
        finally:
            await consumer.stop()

    pub = anyio.run(published)
    assert {c.path: tuple(getattr(c, n) for n in NAMES) for c in pub} == expected(k)

    # text output of rawcap dissect names both ends beside the addresses
    r = cli(cfg, "dissect", "--from", lo, "--to", hi, "--node", k.node, "--no-store",
            "--no-publish")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "/old" in x)
    assert f"{k.client}:40001 ({k.shop}/{k.web}) > {k.server}:8080 ({k.billing}/{k.api}) " \
           "GET /old -> 200" in line

    # --no-k8s: no names
    r = cli(cfg, "dissect", "--from", lo, "--to", hi, "--node", k.node, "--json", "--no-k8s",
            "--no-store", "--no-publish")
    assert r.returncode == 0, r.stderr
    plain = jsonl(r.stdout)
    assert len(plain) == 5 and all(names(c) == ("", "", "", "") for c in plain)


def test_calls_filters_by_namespace_and_pod(replay: Any) -> None:
    cfg, k, _fr, _lo, _hi, db = replay

    def paths(*args: str) -> list[str]:
        r = cli(cfg, "calls", "--db", str(db), "--node", k.node, "--json", *args)
        assert r.returncode == 0, r.stderr
        return [c["path"] for c in jsonl(r.stdout)]

    assert paths() == ["/old", "/svc", "/between", "/new", "/stranger"]
    assert paths("--namespace", k.shop) == ["/old", "/svc"]  # the client end, until the reuse
    assert paths("--namespace", k.jobs) == ["/new"]  # the same IP's later owner
    assert paths("--namespace", k.billing) == ["/old", "/svc", "/between", "/new", "/stranger"]
    assert paths("--namespace", k.shop, "--namespace", k.jobs) == ["/old", "/svc", "/new"]
    assert paths("--pod", f"^{k.batch}$") == ["/new"]
    assert paths("--pod", "^nope", "--pod", f"^{k.web}") == ["/old", "/svc"]
    # a service is not a pod: --pod never matches service/NAME, --namespace does
    assert paths("--pod", k.front) == []
    assert paths("--namespace", k.billing, "--pod", f"^{k.api}") == \
        ["/old", "/between", "/new", "/stranger"]
    # namespace and pod must hold on the same end (shop is web's, api is billing's)
    assert paths("--namespace", k.shop, "--pod", f"^{k.api}") == []
    assert paths("--namespace", k.shop, "--pod", f"^{k.web}") == ["/old", "/svc"]
    # --limit counts the calls that pass the filter, not the rows read
    assert paths("--namespace", k.jobs, "--limit", "1") == ["/new"]
    assert paths("--namespace", k.billing, "--limit", "2") == ["/old", "/svc"]
    assert paths("--namespace", f"nope-{k.id}") == []

    # text output shows the names (pod, service with namespace; unknown ends stay bare)
    r = cli(cfg, "calls", "--db", str(db), "--node", k.node)
    assert r.returncode == 0, r.stderr
    lines = {p: next(x for x in r.stdout.splitlines() if f" {p} " in x) for p in expected(k)}
    assert f"{k.client}:40002 ({k.shop}/{k.web}) > {k.vip}:80 ({k.billing}/service/{k.front})" \
        in lines["/svc"]
    assert f"{k.client}:40004 ({k.jobs}/{k.batch}) > " in lines["/new"]
    assert f" {k.client}:40003 > {k.server}:8080 ({k.billing}/{k.api}) " in lines["/between"]
    assert f" {k.stranger}:40005 > " in lines["/stranger"]

    bad = cli(cfg, "calls", "--db", str(db), "--pod", "(")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--pod" in bad.stderr


def test_pcap_names_only_with_k8s(replay: Any, tmp_path: Path) -> None:
    cfg, k, fr, *_ = replay
    pcap = tmp_path / "x.pcap"
    w = PcapWriter()
    pcap.write_bytes(w.header() + b"".join(w.packets((t, len(b), len(b), b) for t, b in fr)))
    r = cli(cfg, "dissect", "--pcap", str(pcap), "--json", "--no-store")
    assert r.returncode == 0, r.stderr
    plain = jsonl(r.stdout)
    assert len(plain) == 5 and all(names(c) == ("", "", "", "") for c in plain)
    r = cli(cfg, "dissect", "--pcap", str(pcap), "--json", "--no-store", "--k8s")
    assert r.returncode == 0, r.stderr
    assert {c["path"]: names(c) for c in jsonl(r.stdout)} == expected(k)
    # asked for explicitly, an unreachable rawcap.k8s is an error (one line), not silence
    r = cli(cfg, "dissect", "--pcap", str(pcap), "--no-store", "--k8s", "--bootstrap",
            "127.0.0.1:1")
    assert r.returncode != 0 and "rawcap.k8s" in r.stderr and r.stdout == ""


def test_unreachable_k8s_by_default_leaves_names_empty(tmp_path: Path) -> None:
    """The Kafka-source default: without rawcap.k8s calls are still dissected, unnamed."""
    from dissector._workloads import load_workloads
    from rawcap.config import load_config

    cfg = load_config(overrides={"kafka.bootstrap": "127.0.0.1:1"}, env={})
    assert anyio.run(load_workloads, cfg, None) is None
    assert anyio.run(load_workloads, cfg, False) is None
    # an empty index (no Kubernetes layer ever ran) names nothing and costs nothing
    out = CallOutput(workloads=Workloads())
    out(Call("http1", src_ip="10.0.0.1", dst_ip="10.0.0.2", req_ts_ns=1))
    assert names(out.buf[0].as_dict()) == ("", "", "", "")


def test_call_filter_rules() -> None:
    def call(sw: str, sn: str, dw: str, dn: str) -> Call:
        return Call("http1", src_workload=sw, src_namespace=sn, dst_workload=dw, dst_namespace=dn)

    c = call("web-1", "shop", "service/db", "data")
    assert CallFilter()(c) and CallFilter()(call("", "", "", ""))
    assert CallFilter(["data"])(c) and CallFilter(["shop"])(c) and not CallFilter(["x"])(c)
    assert not CallFilter(pods=["db"])(c)  # service/db is not a pod
    assert not CallFilter(["data"], ["web"])(c)  # not on the same end
    assert not CallFilter(["x"])(call("node/n1", "", "", ""))  # nodes have no namespace
    assert not CallFilter(pods=["n1"])(call("node/n1", "", "", ""))
    with pytest.raises(ConfigError, match="--pod"):
        CallFilter(pods=["["])


@pytest.mark.timeout(480)  # two waits of up to 150 s each on a loaded machine
def test_follow_applies_k8s_records_published_while_running(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    """Live: a call from an address nobody holds yet is unnamed; once its pod appears on
    rawcap.k8s (while --follow runs), the next call from it is named."""
    cfg = make_config()
    k = Cluster()
    anyio.run(publish_k8s, cfg, [
        (f"pod/{k.billing}/{k.api}",
         PodRecord(k.billing, k.api, f"u-api-{k.id}", k.node, (k.server,),
                   start_ns=time.time_ns() - 60 * S), time.time_ns()),
    ])
    # stopAfter well beyond the wait below: on a loaded machine joining the shared group
    # rawcap-dissector (a rebalance) and reading its backlog can take most of a minute
    r = cli(cfg, "dissection", "start", "--stop-after", "180s")
    assert r.returncode == 0, r.stderr
    db = tmp_path / "live.db"
    # the group starts where it left off: at the end, not behind every packet the session's
    # other tests produced since the last --follow (minutes of backlog on a loaded machine)
    anyio.run(precommit_end, cfg.get("kafka.bootstrap"), "rawcap-dissector")
    env = {**os.environ, "RAWCAP_BOOTSTRAP": cfg.get("kafka.bootstrap")}
    follow = subprocess.Popen([*RAWCAP, "dissect", "--follow", "--json", "--db", str(db),
                               "--no-publish"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)

    def stored() -> list[dict[str, Any]]:
        if not db.exists():
            return []
        r = cli(cfg, "calls", "--db", str(db), "--node", k.node, "--json")
        return jsonl(r.stdout) if r.returncode == 0 else []

    def wait_for(n: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and follow.poll() is None:
            got = stored()
            if len(got) >= n:
                return got
            time.sleep(0.5)
        state = "running" if follow.poll() is None else f"exited {follow.returncode}"
        raise AssertionError(f"--follow ({state}) stored {len(stored())} calls, not {n}")

    try:
        time.sleep(3)
        t = time.time_ns()
        anyio.run(produce, cfg, k.node, exchange(k.client, 41001, k.server, 8080, t, "/a", 200), 7)
        first = wait_for(1)
        assert names(first[0]) == ("", "", k.api, k.billing)  # the client is nobody's yet
        web = PodRecord(k.shop, k.web, f"u-web-{k.id}", k.node, (k.client,), start_ns=time.time_ns())
        anyio.run(publish_k8s, cfg, [(web.key, web, time.time_ns())])
        time.sleep(2)  # the follower polls rawcap.k8s every 0.3 s
        t = time.time_ns()
        anyio.run(produce, cfg, k.node, exchange(k.client, 41002, k.server, 8080, t, "/b", 200), 7,
                  1)  # seq 1: the node's next batch
        both = wait_for(2)
        r = cli(cfg, "dissection", "stop")  # ends it (final flush), well before stopAfter
        assert r.returncode == 0, r.stderr
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    assert {c["path"]: names(c) for c in both} == {
        "/a": ("", "", k.api, k.billing), "/b": (k.web, k.shop, k.api, k.billing)}
    live = {c["path"]: names(c) for c in jsonl(out) if c["node"] == k.node}
    assert live == {c["path"]: names(c) for c in both}  # stdout and store agree


def test_call_namer_caches_exactly_what_call_names_gives() -> None:
    """Cached per address for the times an answer holds: the same four names as
    ``Workloads.call_names`` for calls in and out of order, across an IP handed to another
    pod, a service and unknown/bad addresses; a record applied later drops the cache."""
    s = 1_000_000_000
    wl = Workloads()
    history: list[tuple[K8sRecord, int]] = [
        (PodRecord("shop", "web-1", "u1", "n1", ("10.1.0.5",), start_ns=100 * s), 1),
        (PodRecord("pay", "api-1", "u2", "n1", ("10.1.0.6",), start_ns=100 * s), 1),
        (ServiceRecord("shop", "web", "sv", cluster_ips=("10.96.0.9",), start_ns=50 * s), 1),
        (PodRecord("shop", "web-1", "u1", "n1", ("10.1.0.5",), phase="Succeeded",
                   start_ns=100 * s, end_ns=200 * s), 300),
        (PodRecord("ops", "job-7", "u3", "n1", ("10.1.0.5",), start_ns=250 * s), 300),
    ]
    for rec, ts in history:
        wl.apply(rec.key.encode(), encode_k8s(rec), ts * 1000)
    namer = CallNamer(wl)
    rng = random.Random(5)
    ips = ["10.1.0.5", "10.1.0.6", "10.96.0.9", "10.9.9.9", "not-an-ip", "[::1]"]
    times = sorted(rng.randrange(0, 400) * s + rng.randrange(s) for _ in range(300))
    for ts in times + rng.sample(times, 100):
        src, dst = rng.choice(ips), rng.choice(ips)
        assert namer(src, dst, ts) == tuple(wl.call_names(src, dst, ts))
    assert namer("10.1.0.5", "10.1.0.6", 150 * s) == ("web-1", "shop", "api-1", "pay")
    assert namer("10.1.0.5", "10.96.0.9", 260 * s) == ("job-7", "ops", "service/web", "shop")
    moved = PodRecord("pay", "api-1", "u2", "n2", ("10.1.0.7",), start_ns=100 * s, rv="2")
    wl.apply(moved.key.encode(), encode_k8s(moved), 400_000)
    assert namer("10.1.0.7", "10.1.0.6", 150 * s) == tuple(wl.call_names("10.1.0.7", "10.1.0.6",
                                                                        150 * s))
