"""The archiver against the private stack: real Kafka (KRaft) and a real S3 server (MinIO).

Each test uses its own node names, consumer group and archive prefix; groups are first
committed at the topic's end so an archiver only sees the batches its test produces.
"""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from rawcap.archive import HOUR_NS
from rawcap.timeparse import format_ns
from rawcap.window import node_partition
from schemas import topics

from .helpers import (
    PARTITIONS,
    Contents,
    Proc,
    Traffic,
    committed,
    make_batch,
    nodes_on_partitions,
    precommit_end,
    produce,
    rawcap,
    records,
    s3_store,
    wait_committed,
)

pytestmark = pytest.mark.integration

FAST = ["--object-size", "16Ki", "--flush-interval", "0.3s", "--session-timeout", "6"]


def _archiver(env: dict[str, str], group: str, *extra: str) -> Proc:
    p = Proc(["archive", "--group", group, *FAST, *extra], env)
    p.wait_for("archiver running", timeout=60)
    return p


def _partitions(nodes: list[str]) -> set[int]:
    return {node_partition(n, PARTITIONS) for n in nodes}


async def _recycle(bootstrap: str, partitions: set[int]) -> None:
    """What retention does: the log start of each partition moves past everything."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await c.start()
    try:
        tps = [TopicPartition(topics.PACKETS, p) for p in sorted(partitions)]
        end = await c.end_offsets(tps)
        await admin.delete_records({tp: RecordsToDelete(end[tp]) for tp in tps})
    finally:
        await c.stop()
        await admin.close()


def test_export_from_archive_equals_kafka_export(stack: Any, aenv: dict[str, str], run_id: str,
                                                 tmp_path: Path) -> None:
    """Window across an hour boundary, three nodes: pcap export, filtered export, consume and
    snapshot create from the archive equal what Kafka gave before retention removed it."""
    group = f"{run_id}-g"
    nodes = nodes_on_partitions(run_id, 3)
    anyio.run(precommit_end, stack.bootstrap, group)
    boundary = (time.time_ns() // HOUR_NS - 1) * HOUR_NS  # an hour boundary in the past
    start = boundary - 40 * 10**9
    items = []
    for seq in range(1, 161):  # 0.5 s apart: 80 s across the boundary
        for k, node in enumerate(nodes):
            items.append((node, make_batch(node, seq, start + seq * 500_000_000 + k * 137, packets=8,
                                           spacing=40_000_000 + k)))
    anyio.run(produce, stack.bootstrap, items)
    lo, hi = format_ns(start + 7_310_000_001), format_ns(boundary + 33_123_456_789)
    win = ["--from", lo, "--to", hi, "--node", ",".join(nodes)]

    def outputs(source: list[str], tag: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, extra in (("all", []), ("dns", ["--port", "53"])):
            f = tmp_path / f"{tag}-{name}.pcapng"
            p = rawcap("pcap", "export", *win, *source, *extra, "-o", str(f), env=aenv)
            assert p.returncode == 0, p.stderr.decode()
            out[name] = f
        p = rawcap("consume", *win, *source, "--json", env=aenv)
        assert p.returncode == 0, p.stderr.decode()
        out["consume"] = p.stdout
        return out

    kafka = outputs([], "kafka")
    assert len(records(kafka["all"])) > 900 and 0 < len(records(kafka["dns"])) < len(records(kafka["all"]))

    arch = _archiver(aenv, group)
    try:
        wait_committed(stack.bootstrap, group, _partitions(nodes))
    finally:
        assert arch.stop() == 0, arch.text
    assert arch.summary()["batches"] == len(items), arch.text
    Contents(s3_store(stack, run_id)).check_exactly_once((n, s) for n, s in
                                                        ((n, s) for s in range(1, 161) for n in nodes))

    anyio.run(_recycle, stack.bootstrap, _partitions(nodes))
    gone = rawcap("pcap", "export", *win, "-o", str(tmp_path / "gone.pcapng"), env=aenv)
    assert b"no packets in the window" in gone.stderr or b"unknown node" in gone.stderr, gone.stderr

    archive = outputs(["--source", "archive"], "archive")
    assert archive["all"].read_bytes() == kafka["all"].read_bytes()
    assert archive["dns"].read_bytes() == kafka["dns"].read_bytes()
    assert archive["consume"] == kafka["consume"]

    snap_env = {**aenv, "RAWCAP_SNAPSHOTS_URL": str(tmp_path / "snaps")}
    p = rawcap("snapshot", "create", *win, "--source", "archive", "--name", "fromarchive", env=snap_env)
    assert p.returncode == 0, p.stderr.decode()
    p = rawcap("snapshot", "export", "fromarchive", "-o", str(tmp_path / "snap.pcapng"), env=snap_env)
    assert p.returncode == 0, p.stderr.decode()
    assert records(tmp_path / "snap.pcapng") == records(kafka["all"])

    # ls: per node and hour, straight from the index
    p = rawcap("archive", "ls", "--from", format_ns(start), "--to", format_ns(boundary + HOUR_NS),
               "--json", env=aenv)
    assert p.returncode == 0, p.stderr.decode()
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    rows = [r for r in rows if r["node"] in nodes]
    assert {(r["node"], r["hour"][:13]) for r in rows} == {
        (n, format_ns(h)[:13]) for n in nodes for h in (boundary - HOUR_NS, boundary)
    }
    for node in nodes:
        mine = sorted((r for r in rows if r["node"] == node), key=lambda r: r["hour"])
        assert mine[0]["seq_min"] == 1 and mine[-1]["seq_max"] == 160
        assert sum(r["batches"] for r in mine) == 160 and all(r["missing"] == 0 for r in mine)
    text = rawcap("archive", "ls", "--from", format_ns(start), "--node", nodes[0], env=aenv)
    assert text.returncode == 0 and nodes[0] in text.stdout.decode() and nodes[1] not in text.stdout.decode()


def test_kill_9_during_uploads_archives_every_batch_once(stack: Any, aenv: dict[str, str],
                                                          run_id: str) -> None:
    group = f"{run_id}-g"
    nodes = nodes_on_partitions(run_id, 3)
    anyio.run(precommit_end, stack.bootstrap, group)
    rng = random.Random()
    kills = resumed = completed = 0
    with Traffic(stack.bootstrap, nodes, rate=15, size=600) as traffic:
        while kills < 6:
            arch = _archiver(aenv, group)
            arch.wait_for("assigned partitions", timeout=60)
            time.sleep(rng.uniform(0.2, 2.5))  # the backlog of the last restart is being written
            assert arch.p.poll() is None, arch.text
            arch.stop(signal.SIGKILL)
            kills += 1
            resumed += arch.count("resuming: objects of this partition exist already")
            completed += arch.count("completing an object written before a crash")
        traffic.stop()
    sent = list(traffic.sent)
    assert len(sent) > 500
    final = _archiver(aenv, group)
    try:
        wait_committed(stack.bootstrap, group, _partitions(nodes), timeout=120)
    finally:
        assert final.stop() == 0, final.text
    summary = final.summary()
    skipped, adopted = summary["skipped"], summary["adopted"]
    contents = Contents(s3_store(stack, run_id))
    contents.check_exactly_once(sent)
    print(f"\n{kills} kills; restarts found existing uncommitted objects {resumed} times and completed "
          f"{completed} objects lacking their index; the final run skipped {skipped} batches and "
          f"completed {adopted} objects; {len(contents.data)} objects hold {len(sent)} batches")


def test_bucket_outage_waits_and_loses_nothing(stack: Any, aenv: dict[str, str], run_id: str) -> None:
    import socket

    group = f"{run_id}-g"
    nodes = nodes_on_partitions(run_id, 2)
    anyio.run(precommit_end, stack.bootstrap, group)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    arch = _archiver(aenv, group, "--metrics-port", str(port))

    def metric(name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    try:
        with Traffic(stack.bootstrap, nodes, rate=20, size=400) as traffic:
            arch.wait_for("assigned partitions")
            time.sleep(3)
            assert metric("rawcap_archive_objects_written_total") > 0
            stack.stop_s3()
            try:
                time.sleep(30)
                assert arch.p.poll() is None, arch.text
                assert metric("rawcap_archive_errors_total") > 0
                assert metric("rawcap_archive_lag_records") > 0
                written_during = metric("rawcap_archive_objects_written_total")
            finally:
                stack.start_s3()
            time.sleep(5)
            traffic.stop()
        wait_committed(stack.bootstrap, group, _partitions(nodes), timeout=120)
        assert metric("rawcap_archive_objects_written_total") > written_during
        assert metric("rawcap_archive_upload_seconds_count") > 0
    finally:
        rc = arch.stop()
    assert rc == 0, arch.text
    assert "archive write failed, retrying with backoff" in arch.text
    assert "archive writes recovered" in arch.text
    Contents(s3_store(stack, run_id)).check_exactly_once(traffic.sent)


READ_PATHS = {
    # each partition through the project's fetch client, aiokafka keeping the group
    "wire": {},
    # everything through aiokafka's fetcher (what TLS and SASL take)
    "aiokafka": {"RAWCAP_KAFKA_READ_CLIENT": "aiokafka"},
    # the fetch client hands each partition to aiokafka mid-stream (leader change, offset
    # out of range), from the offset it reached
    "handover": {"RAWCAP_TEST_HOOKS": "archive-handover"},
}


@pytest.mark.parametrize("path", sorted(READ_PATHS))
def test_two_instances_split_the_partitions(stack: Any, aenv: dict[str, str], run_id: str,
                                            path: str) -> None:
    aenv = {**aenv, **READ_PATHS[path]}
    group = f"{run_id}-g"
    nodes = nodes_on_partitions(run_id, PARTITIONS)
    assert _partitions(nodes) == set(range(PARTITIONS))
    anyio.run(precommit_end, stack.bootstrap, group)
    with Traffic(stack.bootstrap, nodes, rate=15, size=300) as traffic:
        a = _archiver(aenv, group)
        a.wait_for("assigned partitions")
        time.sleep(2)
        b = _archiver(aenv, group)
        try:
            b.wait_for("assigned partitions", timeout=60)
            a.wait_for("assigned partitions", times=2, timeout=60)
            time.sleep(4)
            traffic.stop()
            wait_committed(stack.bootstrap, group, range(PARTITIONS))
        finally:
            rc_a, rc_b = a.stop(), b.stop()
    assert rc_a == 0 and rc_b == 0, a.text + "\n----\n" + b.text
    pa, pb = set(a.assigned()), set(b.assigned())
    assert pa and pb and not pa & pb and pa | pb == set(range(PARTITIONS)), (pa, pb)
    sa, sb = a.summary(), b.summary()
    assert sa["objects"] > 0 and sb["objects"] > 0, (sa, sb)
    handovers = a.count("reading on with aiokafka") + b.count("reading on with aiokafka")
    if path == "handover":
        assert handovers >= PARTITIONS, a.text + "\n----\n" + b.text
    else:
        assert handovers == 0, a.text + "\n----\n" + b.text
    Contents(s3_store(stack, run_id)).check_exactly_once(traffic.sent)


def test_bad_inputs_fail_fast_with_one_line(stack: Any, aenv: dict[str, str], run_id: str) -> None:
    group = f"{run_id}-g"
    cases = [
        ({"RAWCAP_ARCHIVE_URL": "ftp://bucket/x"}, "unknown scheme 'ftp://'"),
        ({"RAWCAP_ARCHIVE_URL": ""}, "archive.url is not set"),
        ({"RAWCAP_ARCHIVE_URL": f"s3://no-such-bucket-{run_id}/x"}, "does not exist"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "access denied"),
        ({"AWS_ACCESS_KEY_ID": "nobody"}, "access denied"),
    ]
    for extra, needle in cases:
        env = {**aenv, **extra}
        for argv in (["archive", "--group", group], ["archive", "ls", "--from", "-1h"]):
            p = rawcap(*argv, env=env, timeout=90)
            err = p.stderr.decode().strip()
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert p.returncode == 2, (argv, extra, err)
            assert len(lines) == 1 and lines[0].startswith("rawcap: error:"), (argv, extra, err)
            assert needle in lines[0], (needle, lines[0])
    bad = rawcap("archive", "--group", group, "--object-size", "lots", env=aenv)
    assert bad.returncode == 2 and b"archive.objectSize" in bad.stderr
    assert anyio.run(committed, stack.bootstrap, group) == {}


def test_file_archive_retention_and_corrupt_batches(stack: Any, aenv: dict[str, str], run_id: str,
                                                    tmp_path: Path) -> None:
    """file:// archives; a corrupt batch goes to rawcap.dlq without stopping anything;
    archive.retention deletes old hours (index first) and keeps the rest."""
    group = f"{run_id}-g"
    (node,) = nodes_on_partitions(run_id, 1)
    env = {**aenv, "RAWCAP_ARCHIVE_URL": f"file://{tmp_path}/arch"}
    anyio.run(precommit_end, stack.bootstrap, group)
    now = time.time_ns()
    old = (now // HOUR_NS - 72) * HOUR_NS + 600 * 10**9
    recent = max(now // HOUR_NS * HOUR_NS, now - 30 * 10**9)
    items = [(node, make_batch(node, s, old + s * 10**9)) for s in range(1, 6)]
    items.append((node, b"RCAPnot a batch"))
    items += [(node, make_batch(node, s, recent + s * 10**9)) for s in range(6, 11)]
    anyio.run(produce, stack.bootstrap, items)
    arch = _archiver(env, group)
    try:
        wait_committed(stack.bootstrap, group, _partitions([node]))
    finally:
        assert arch.stop() == 0, arch.text
    s = arch.summary()
    assert s["batches"] == 10 and s["dlq"] == 1, arch.text
    root = tmp_path / "arch"
    old_hour_dirs = list(root.glob(f"node={node}/date=*/hour=*"))
    assert len(old_hour_dirs) == 2, old_hour_dirs
    p = rawcap("archive", "ls", "--from", format_ns(old - HOUR_NS), "--node", node, "--json", env=env)
    assert [json.loads(x)["batches"] for x in p.stdout.splitlines()] == [5, 5]

    arch = _archiver(env, group, "--retention", "1d")
    try:
        deadline = time.monotonic() + 30
        old_day = f"date={format_ns(old)[:10]}"
        while time.monotonic() < deadline and any(old_day in str(f) for f in root.rglob("*.*")):
            time.sleep(0.2)
    finally:
        assert arch.stop() == 0, arch.text
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    hour = format_ns(recent)
    here = f"date={hour[:10]}/hour={hour[11:13]}/"
    assert left and all(here in x for x in left), left
    assert len([x for x in left if x.endswith(".rcsg")]) == len([x for x in left if x.endswith(".json")])
    p = rawcap("consume", "--source", "archive", "--from", format_ns(old - HOUR_NS), "--node", node, env=env)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 5 * 10, p.stderr.decode()
