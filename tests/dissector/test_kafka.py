"""Against the real local stack: range replay from rawcap.packets, rawcap.calls output,
the dissection switch and live --follow in consumer group rawcap-dissector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from rawcap.config import Config
from rawcap.kafka import ensure_topics
from rawcap.timeparse import format_ns
from schemas import Packet, encode_batch, topics
from schemas.calls import decode_calls
from tests.archiver.helpers import precommit_end

from .test_engine import dissect, frames

RAWCAP = [sys.executable, "-m", "rawcap.cli"]


async def produce(cfg: Config, node: str, fr: list[tuple[int, bytes]], per_batch: int = 20,
                  seq0: int = 0) -> None:
    await ensure_topics(cfg)
    p = AIOKafkaProducer(bootstrap_servers=cfg.get("kafka.bootstrap"))
    await p.start()
    try:
        for i in range(0, len(fr), per_batch):
            chunk = fr[i:i + per_batch]
            pk = [Packet(ts, len(b), len(b), 2, 0, b) for ts, b in chunk]
            value = encode_batch(node=node, seq=seq0 + i // per_batch, packets=pk,
                                 ifaces={2: "eth0"})
            await p.send_and_wait(topics.PACKETS, value, key=node.encode(),
                                  timestamp_ms=chunk[0][0] // 1_000_000)
    finally:
        await p.stop()


def cli(cfg: Config, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAWCAP_BOOTSTRAP": cfg.get("kafka.bootstrap")}
    return subprocess.run([*RAWCAP, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def key(c: dict[str, Any]) -> tuple[Any, ...]:
    return (c["proto"], c["method"], c["path"], c["status"], c["qname"], c["rcode"],
            c["req_ts_ns"], c["complete"])


def test_range_replay_from_kafka(real_pcap: Path, make_config: Callable[..., Config],
                                 tmp_path: Path) -> None:
    cfg = make_config()
    node = f"node-{uuid.uuid4().hex[:6]}"
    fr = frames(real_pcap)
    anyio.run(produce, cfg, node, fr)
    lo, hi = format_ns(fr[0][0] - 1_000_000), format_ns(fr[-1][0] + 1_000_000)
    runs = []
    for _ in range(2):
        r = cli(cfg, "dissect", "--from", lo, "--to", hi, "--node", node, "--json",
                "--db", str(tmp_path / "c.db"))
        assert r.returncode == 0, r.stderr
        runs.append([json.loads(x) for x in r.stdout.splitlines()])
    assert runs[0] == runs[1]  # replaying a range twice: the same calls
    want, _ = dissect(fr)
    assert sorted(map(key, runs[0])) == sorted(key(c.as_dict()) for c in want)
    assert {c["node"] for c in runs[0]} == {node}
    stored = cli(cfg, "calls", "--db", str(tmp_path / "c.db"), "--node", node, "--json")
    assert sorted(map(key, (json.loads(x) for x in stored.stdout.splitlines()))) == sorted(
        map(key, runs[0]))  # two replays into one store: each call stored once
    # a range starting mid-connection still yields the later complete calls
    first = next(c for c in want if c.proto == "http1")
    r = cli(cfg, "dissect", "--from", format_ns(first.resp_ts_ns + 1), "--to", hi, "--node",
            node, "--json", "--no-store", "--no-publish")
    part = [json.loads(x) for x in r.stdout.splitlines()]
    got = {(c["method"], c["path"], c["status"]) for c in part if c["complete"]}
    assert ("GET", "/boom", 500) in got and len(got) >= 9
    # the calls went to rawcap.calls too (two replays + nothing from --no-publish)

    async def read_calls() -> list[Any]:
        c = AIOKafkaConsumer(topics.CALLS, bootstrap_servers=cfg.get("kafka.bootstrap"),
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        try:
            out = []
            for _ in range(10):
                got = await c.getmany(timeout_ms=1000, max_records=1000)
                for recs in got.values():
                    out += [c for r in recs if r.key == node.encode()
                            for c in decode_calls(r.value)]
            return out
        finally:
            await c.stop()

    published = anyio.run(read_calls)
    assert len(published) == 2 * len(want)
    # bad input: one line, non-zero, names what was wrong
    bad = cli(cfg, "dissect", "--from", "yesterday-ish", "--to", hi)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_switch_and_follow(real_pcap: Path, make_config: Callable[..., Config],
                           tmp_path: Path) -> None:
    cfg = make_config()
    anyio.run(ensure_topics, cfg)
    r = cli(cfg, "dissection", "stop", "--json")
    assert r.returncode == 0, r.stderr
    r = cli(cfg, "dissection", "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["enabled"] is False
    r = cli(cfg, "dissection", "start", "--stop-after", "10s")
    assert r.returncode == 0 and "started" in r.stdout
    st = json.loads(cli(cfg, "dissection", "status", "--json").stdout)
    assert st == {**st, "enabled": True, "stop_after_s": 10.0}

    node = f"live-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "RAWCAP_BOOTSTRAP": cfg.get("kafka.bootstrap")}
    db = tmp_path / "live.db"
    # start the group at the end: the session's other tests' packets are not this test's
    anyio.run(precommit_end, cfg.get("kafka.bootstrap"), "rawcap-dissector")
    follow = subprocess.Popen([*RAWCAP, "dissect", "--follow", "--json", "--db", str(db)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    try:
        time.sleep(3)
        fr = frames(real_pcap)
        anyio.run(produce, cfg, node, fr)
        # stopAfter (10 s without packets) ends it on its own
        out, err = follow.communicate(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    live = [json.loads(x) for x in out.splitlines()]
    mine = [c for c in live if c["node"] == node]
    want, _ = dissect(fr)
    assert len(mine) == len(want)
    assert cli(cfg, "calls", "--db", str(db), "--node", node).stdout.count("\n") == len(want)


def test_replay_of_a_snapshot_equals_replay_from_kafka(real_pcap: Path, make_config: Callable[..., Config],
                                                       tmp_path: Path) -> None:
    """``--source snapshot:ID`` dissects what the snapshot kept: the same calls as the range
    from Kafka, and only what its stored filter admitted."""
    cfg = make_config()
    node = f"node-{uuid.uuid4().hex[:6]}"
    fr = frames(real_pcap)
    anyio.run(produce, cfg, node, fr)
    lo, hi = format_ns(fr[0][0] - 1_000_000), format_ns(fr[-1][0] + 1_000_000)
    store = f"file://{tmp_path / 'snaps'}"
    env_store = ("--config", str(tmp_path / "v.yaml"))
    (tmp_path / "v.yaml").write_text(f"snapshots:\n  url: {store}\n")
    from_kafka = cli(cfg, "dissect", "--from", lo, "--to", hi, "--node", node, "--json",
                     "--no-store", "--no-publish")
    assert from_kafka.returncode == 0, from_kafka.stderr
    kafka_calls = [json.loads(x) for x in from_kafka.stdout.splitlines()]
    want = sorted(map(key, kafka_calls))
    want_udp = sorted(key(c) for c in kafka_calls if c["transport"] == "udp")
    assert any(k[0] == "http1" for k in want) and want_udp

    for name, extra in (("all", ()), ("dns-only", ("--proto", "udp"))):
        sid = f"{name}-{node}"
        made = cli(cfg, *env_store, "snapshot", "create", "--from", lo, "--to", hi, "--node", node,
                   "--name", sid, *extra)
        assert made.returncode == 0, made.stderr
        got = cli(cfg, *env_store, "dissect", "--source", f"snapshot:{sid}", "--json",
                  "--no-store", "--no-publish")
        assert got.returncode == 0, got.stderr
        calls = sorted(map(key, (json.loads(x) for x in got.stdout.splitlines())))
        if name == "all":
            assert calls == want
        else:  # the stored --proto udp filter is applied again: the UDP calls (DNS) only
            assert calls == want_udp
    missing = cli(cfg, *env_store, "dissect", "--source", "snapshot:no-such-snapshot", "--json")
    assert missing.returncode == 2 and "unknown snapshot id" in missing.stderr
