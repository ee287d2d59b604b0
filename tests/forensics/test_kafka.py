"""The forensics commands against the real local stack (Kafka KRaft + MinIO).

Data reaches ``rawcap.packets`` through ``rawcap pcap import`` of real tcpdump captures (and
hand-built batches for gaps and corrupt values), so these tests do not depend on the capture
agent; ``test_capture_vs_tcpdump`` covers the agent when it is installed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from time import time_ns
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from rawcap.pcap import PcapWriter
from rawcap.timeparse import format_ns
from rawcap.window import node_partition
from schemas import Packet, encode_batch, topics

from .helpers import DATA, RAWCAP, rawcap, records, tshark_rows, wireshark_warnings

pytestmark = pytest.mark.integration
FROM = "2026-11-23T00:00:00Z"
RAWCAP_CMD = shlex.join(RAWCAP)


def _shifted(tmp_path: Path, shift_ns: int) -> Path:
    recs = records(DATA / "small.pcap")
    out = tmp_path / f"shift{shift_ns}.pcap"
    w = PcapWriter()
    out.write_bytes(
        w.header() + b"".join(w.packets([(r.ts_ns + shift_ns, r.caplen, r.origlen, r.data) for r in recs]))
    )
    return out


def _import(kenv: dict[str, str], path: Path, node: str) -> None:
    p = rawcap("pcap", "import", str(path), "--node", node, env=kenv)
    assert p.returncode == 0, p.stderr.decode()
    assert f"as node {node}".encode() in p.stderr


def test_import_export_round_trip_equals_tcpdump(
    kenv: dict[str, str], node_name: str, tmp_path: Path
) -> None:
    _import(kenv, DATA / "small.pcap", node_name)
    out = tmp_path / "out.pcapng"
    p = rawcap("pcap", "export", "--node", node_name, "--from", FROM, "-o", str(out), env=kenv)
    assert p.returncode == 0, p.stderr.decode()
    assert wireshark_warnings(out) == []
    assert tshark_rows(out) == tshark_rows(DATA / "small.pcap")  # timestamps (ns), lengths
    assert [bytes(r.data) for r in records(out)] == [bytes(r.data) for r in records(DATA / "small.pcap")]
    assert {r.iface for r in records(out)} == {f"{node_name}:imported"}
    classic = tmp_path / "out.pcap"
    p = rawcap(
        "pcap",
        "export",
        "--node",
        node_name,
        "--from",
        FROM,
        "--format",
        "pcap",
        "-o",
        str(classic),
        env=kenv,
    )
    assert p.returncode == 0 and wireshark_warnings(classic) == []
    assert classic.read_bytes()[24:] == (DATA / "small.pcap").read_bytes()[24:]
    # The pcapng tcpdump's file became in Wireshark round-trips too (interface name kept).
    _import(kenv, DATA / "small.pcapng", node_name + "-ng")
    p = rawcap("pcap", "export", "--node", node_name + "-ng", "--from", FROM, "-o", "-", env=kenv)
    assert tshark_rows("-", stdin=p.stdout) == tshark_rows(DATA / "small.pcapng")


def test_truncated_import_keeps_whole_packets(kenv: dict[str, str], node_name: str) -> None:
    p = rawcap("pcap", "import", str(DATA / "truncated.pcap"), "--node", node_name, env=kenv)
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and err.startswith("rawcap: error:") and "truncated" in err
    assert len(err.splitlines()) == 1 and "41 whole packets" in err
    c = rawcap("consume", "--node", node_name, "--from", FROM, env=kenv)
    assert len(c.stdout.splitlines()) == 41


def test_two_nodes_merge_and_stdout_pipe(kenv: dict[str, str], node_name: str, tmp_path: Path) -> None:
    a, b = node_name + "-a", node_name + "-b"
    _import(kenv, DATA / "small.pcap", a)
    _import(kenv, _shifted(tmp_path, 250_000), b)
    p = rawcap("pcap", "export", "--node", f"{a},{b}", "--from", FROM, "--comment-node", "-o", "-", env=kenv)
    assert p.returncode == 0, p.stderr.decode()
    rows = tshark_rows("-", "frame.time_epoch", "frame.interface_name", "frame.comment", stdin=p.stdout)
    assert len(rows) == 106
    times = [float(r[0]) for r in rows]
    assert times == sorted(times)
    assert {r[1] for r in rows} == {f"{a}:imported", f"{b}:imported"}
    assert all(r[2] == "node=" + r[1].rsplit(":", 1)[0] for r in rows)
    piped = subprocess.run(["tshark", "-r", "-"], input=p.stdout, capture_output=True)
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 106


def test_window_edges_and_filters(kenv: dict[str, str], node_name: str) -> None:
    _import(kenv, DATA / "small.pcap", node_name)
    recs = records(DATA / "small.pcap")
    # Edges between packets 8|9 and 30|31 (both inside the one imported batch), at the
    # microsecond precision of ISO-8601 times.
    lo = (recs[8].ts_ns + recs[9].ts_ns) // 2 // 1000 * 1000
    hi = (recs[30].ts_ns + recs[31].ts_ns) // 2 // 1000 * 1000
    assert recs[8].ts_ns < lo < recs[9].ts_ns and recs[30].ts_ns < hi < recs[31].ts_ns

    def iso(ns: int) -> str:
        return format_ns(ns)[:26] + "Z"

    p = rawcap("consume", "--node", node_name, "--json", "--from", iso(lo), "--to", iso(hi), env=kenv)
    got = [json.loads(x)["ts_ns"] for x in p.stdout.splitlines()]
    assert got == [r.ts_ns for r in recs[9:31]], p.stderr.decode()
    p = rawcap(
        "consume",
        "--node",
        node_name,
        "--from",
        FROM,
        "--port",
        "8080",
        "tcp[tcpflags] & tcp-syn != 0",
        env=kenv,
    )
    lines = p.stdout.decode().splitlines()
    # libpcap's tcp[...] only looks at IPv4: the IPv4 SYN and SYN-ACK, not the IPv6 ones.
    assert len(lines) == 2 and all("[S]" in x or "[S.]" in x for x in lines)


async def _produce(bootstrap: str, values: list[tuple[bytes, int]], node: str) -> None:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=9 * 1024 * 1024)
    await prod.start()
    try:
        for value, ts_ns in values:
            await prod.send_and_wait(
                topics.PACKETS, value, key=node.encode(), timestamp_ms=ts_ns // 1_000_000
            )
    finally:
        await prod.stop()


def _frame(i: int) -> bytes:
    return b"\x02" * 12 + b"\x08\x00" + bytes(range(i % 200, i % 200 + 48))


async def _dlq_values(bootstrap: str, node: str) -> list[Any]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await c.start()
    try:
        await c._client._wait_on_metadata(topics.DLQ)
        tps = [TopicPartition(topics.DLQ, p) for p in c.partitions_for_topic(topics.DLQ) or [0]]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out = []
        for _ in range(10):
            got = await c.getmany(timeout_ms=1000)
            for recs in got.values():
                out += [r for r in recs if r.key == node.encode()]
            if out:
                break
        return out
    finally:
        await c.stop()


async def test_gap_and_corrupt_batch_are_reported(kenv: dict[str, str], node_name: str, stack: Any) -> None:
    import time

    t0 = time.time_ns() - 60 * 10**9
    vals = []
    for seq in (1, 2, 4, 5):  # batch 3 never arrives
        pk = [Packet(t0 + seq * 10**9 + i * 1000, 62, 62, 1, 0, _frame(i)) for i in range(10)]
        vals.append((encode_batch(node=node_name, seq=seq, packets=pk, ifaces={1: "eth0"}), pk[0].ts_ns))
    corrupt = bytearray(vals[3][0])
    corrupt[-20] ^= 0xFF
    vals[3] = (bytes(corrupt), vals[3][1])
    await _produce(stack.bootstrap, vals, node_name)
    p = await anyio.to_thread.run_sync(
        lambda: rawcap("consume", "--node", node_name, "--from", "-5m", env=kenv)
    )
    assert p.returncode == 0
    assert len(p.stdout.splitlines()) == 30  # batches 1, 2, 4
    err = p.stderr.decode()
    assert "sequence gap: batches 3..3 missing" in err and "1 corrupt batch(es) skipped" in err
    dlq = await _dlq_values(stack.bootstrap, node_name)
    assert dlq and bytes(dlq[0].value) == bytes(corrupt)
    assert dict(dlq[0].headers)["error"].startswith(b"zstd body")


def test_bad_inputs_with_kafka(kenv: dict[str, str], node_name: str, tmp_path: Path) -> None:
    _import(kenv, DATA / "small.pcap", node_name)
    p = rawcap(
        "pcap",
        "export",
        "--node",
        node_name + "-typo",
        "--from",
        FROM,
        "-o",
        str(tmp_path / "x.pcapng"),
        env=kenv,
    )
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and f"unknown node '{node_name}-typo'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pcapng").exists()
    empty = tmp_path / "empty.pcapng"
    p = rawcap(
        "pcap",
        "export",
        "--node",
        node_name,
        "--from",
        "2001-01-01T00:00:00Z",
        "--to",
        "2001-01-01T00:01:00Z",
        "-o",
        str(empty),
        env=kenv,
    )
    assert p.returncode == 0 and b"no packets in the window" in p.stderr
    assert tshark_rows(empty) == [] and wireshark_warnings(empty) == []
    p = rawcap("pcap", "import", str(tmp_path / "missing.pcap"), env=kenv)
    assert p.returncode == 2 and b"no such capture file" in p.stderr


async def _recycle(bootstrap: str, node: str) -> None:
    """What retention does when it recycles: the partition's log start moves past the data."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await c.start()
    try:
        await c._client._wait_on_metadata(topics.PACKETS)
        n = len(c.partitions_for_topic(topics.PACKETS) or ())
        tp = TopicPartition(topics.PACKETS, node_partition(node, n))
        end = (await c.end_offsets([tp]))[tp]
        await admin.delete_records({tp: RecordsToDelete(end)})
        assert (await c.beginning_offsets([tp]))[tp] == end
    finally:
        await c.stop()
        await admin.close()


async def test_snapshot_outlives_recycling_on_s3(
    kenv: dict[str, str], node_name: str, stack: Any, tmp_path: Path
) -> None:
    import obstore
    from obstore.store import S3Store

    env = {**kenv, "RAWCAP_SNAPSHOTS_URL": f"s3://{stack.bucket}/snaps-{node_name}"}

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return rawcap(*args, env=env)

    await anyio.to_thread.run_sync(_import, kenv, DATA / "small.pcap", node_name)
    before = tmp_path / "before.pcapng"
    p = await anyio.to_thread.run_sync(
        lambda: run("pcap", "export", "--node", node_name, "--from", FROM, "-o", str(before))
    )
    assert p.returncode == 0
    p = await anyio.to_thread.run_sync(
        lambda: run(
            "snapshot",
            "create",
            "--node",
            node_name,
            "--from",
            FROM,
            "--to",
            "now",
            "--name",
            f"inc-{node_name}",
            "--json",
        )
    )
    assert p.returncode == 0, p.stderr.decode()
    manifest = json.loads(p.stdout)
    assert manifest["nodes"][node_name]["packets"] == 53 and manifest["nodes"][node_name]["gaps"] == []
    again = await anyio.to_thread.run_sync(
        lambda: run(
            "snapshot",
            "create",
            "--node",
            node_name,
            "--from",
            FROM,
            "--to",
            "now",
            "--name",
            f"inc-{node_name}",
        )
    )
    assert again.returncode == 2 and b"already exists" in again.stderr

    await _recycle(stack.bootstrap, node_name)
    gone = await anyio.to_thread.run_sync(lambda: run("consume", "--node", node_name, "--from", FROM))
    assert gone.stdout == b""  # the rolling topic no longer has it ...
    after = tmp_path / "after.pcapng"
    p = await anyio.to_thread.run_sync(
        lambda: run("snapshot", "export", f"inc-{node_name}", "-o", str(after))
    )
    assert p.returncode == 0, p.stderr.decode()
    assert (
        tshark_rows(after) == tshark_rows(before) == tshark_rows(DATA / "small.pcap")
    )  # ... the snapshot has
    assert [bytes(r.data) for r in records(after)] == [bytes(r.data) for r in records(before)]
    ok = await anyio.to_thread.run_sync(lambda: run("snapshot", "verify", f"inc-{node_name}"))
    assert ok.returncode == 0

    # Flip one byte of a data object behind rawcap's back: verify names it.
    store = S3Store(stack.bucket, prefix=f"snaps-{node_name}", **stack.s3_store_kwargs())
    obj = f"inc-{node_name}/{manifest['objects'][0]['path']}"
    data = bytearray(bytes(obstore.get(store, obj).bytes()))
    data[len(data) // 2] ^= 0x01
    obstore.put(store, obj, bytes(data))
    bad = await anyio.to_thread.run_sync(lambda: run("snapshot", "verify", f"inc-{node_name}"))
    assert bad.returncode == 2 and manifest["objects"][0]["path"].encode() in bad.stdout + bad.stderr
    assert (
        await anyio.to_thread.run_sync(lambda: run("snapshot", "delete", f"inc-{node_name}", "--force"))
    ).returncode == 0


def test_older_data_after_newer_in_the_partition(
    kenv: dict[str, str], node_name: str, tmp_path: Path
) -> None:
    """Timestamps in a partition are not monotonic (here: an old capture imported after a newer
    one into the same node); a window over the older data must still find all of it."""
    _import(kenv, DATA / "small.pcap", node_name)
    older = _shifted(tmp_path, -3600 * 10**9)  # an hour earlier, imported second
    _import(kenv, older, node_name)
    recs = records(older)
    lo, hi = recs[0].ts_ns // 10**9 - 1, recs[-1].ts_ns // 10**9 + 2
    p = rawcap("consume", "--node", node_name, "--json", "--from", str(lo), "--to", str(hi), env=kenv)
    assert p.returncode == 0, p.stderr.decode()
    assert [json.loads(x)["ts_ns"] for x in p.stdout.splitlines()] == [r.ts_ns for r in recs]
    both = rawcap("consume", "--node", node_name, "--from", FROM, env=kenv)
    assert len(both.stdout.splitlines()) == 2 * len(recs)


async def _set_packets_topic(bootstrap: str, **overrides: str) -> None:
    """Set ``rawcap.packets``' configs to what the stack created plus ``overrides``
    (AlterConfigs replaces the whole set, so the base set is always sent along)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from rawcap.config import load_config

    configs = dict(topics.TOPIC_CONFIGS[topics.PACKETS])
    configs["retention.bytes"] = str(load_config(env={}).get("tap.capture.raw.storageSize"))
    configs.update(overrides)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        res = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.PACKETS, configs)])
        for resp in res:
            for err_code, err_msg, *_ in resp.resources:
                assert err_code == 0, err_msg
    finally:
        await admin.close()


async def _roll_and_wait_for_retention(bootstrap: str, node: str, limit_s: float = 180) -> int:
    """With a tiny retention set, roll the node's partition (one filler batch of another
    node after ``segment.ms``) and wait until the broker's retention check has deleted the
    node's data; returns the new log start offset."""
    import time

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await c.start()
    await prod.start()
    try:
        await c._client._wait_on_metadata(topics.PACKETS)
        tp = TopicPartition(topics.PACKETS, node_partition(node, len(c.partitions_for_topic(topics.PACKETS))))
        end = (await c.end_offsets([tp]))[tp]
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            await anyio.sleep(1.5)  # > segment.ms: the next append rolls the segment
            filler = encode_batch(node=node + "-filler", seq=1, packets=[], ifaces={})
            await prod.send_and_wait(tp.topic, filler, key=b"filler", partition=tp.partition)
            start = (await c.beginning_offsets([tp]))[tp]
            if start >= end:
                return start
            await anyio.sleep(3)
        raise AssertionError(f"retention did not recycle {tp} within {limit_s}s")
    finally:
        await prod.stop()
        await c.stop()


async def test_snapshot_survives_real_retention(
    kenv: dict[str, str], node_name: str, stack: Any, tmp_path: Path
) -> None:
    """The acceptance path with the broker's own retention (not DeleteRecords): snapshot,
    shrink retention until the topic recycles the window, then export the snapshot."""
    await anyio.to_thread.run_sync(_import, kenv, DATA / "small.pcap", node_name)
    before = tmp_path / "before.pcapng"
    p = await anyio.to_thread.run_sync(
        lambda: rawcap("pcap", "export", "--node", node_name, "--from", FROM, "-o", str(before), env=kenv)
    )
    assert p.returncode == 0, p.stderr.decode()
    p = await anyio.to_thread.run_sync(
        lambda: rawcap(
            "snapshot",
            "create",
            "--node",
            node_name,
            "--from",
            FROM,
            "--to",
            "now",
            "--name",
            "ret",
            env=kenv,
        )
    )
    assert p.returncode == 0, p.stderr.decode()
    await _set_packets_topic(stack.bootstrap, **{"retention.ms": "1000", "segment.ms": "1000"})
    try:
        await _roll_and_wait_for_retention(stack.bootstrap, node_name)
    finally:
        await _set_packets_topic(stack.bootstrap)
    gone = await anyio.to_thread.run_sync(
        lambda: rawcap("consume", "--node", node_name, "--from", FROM, env=kenv)
    )
    # The node left no trace in the topic: an unknown node, and the error says why it may be.
    err = gone.stderr.decode().strip()
    assert gone.returncode == 2 and gone.stdout == b"" and len(err.splitlines()) == 1, err
    assert f"unknown node '{node_name}'" in err and "recycled by retention" in err
    after = tmp_path / "after.pcapng"
    p = await anyio.to_thread.run_sync(
        lambda: rawcap("snapshot", "export", "ret", "-o", str(after), env=kenv)
    )
    assert p.returncode == 0, p.stderr.decode()
    assert wireshark_warnings(after) == []
    assert tshark_rows(after) == tshark_rows(before) == tshark_rows(DATA / "small.pcap")
    assert [bytes(r.data) for r in records(after)] == [bytes(r.data) for r in records(DATA / "small.pcap")]


def test_stdout_into_a_real_tshark_pipe(kenv: dict[str, str], node_name: str) -> None:
    """``rawcap pcap export -o - | tshark -r -`` as a shell runs it (tshark reads a pipe it
    cannot seek; rawcap must write nothing but the capture to stdout)."""
    _import(kenv, DATA / "small.pcap", node_name)
    cmd = (
        f"set -o pipefail; {RAWCAP_CMD} pcap export --node {node_name} --from {FROM} -o - "
        "| tshark -r - -T fields -e frame.time_epoch -e frame.len"
    )
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, env={**os.environ, **kenv}, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    rows = [tuple(x.split("\t")) for x in p.stdout.decode().splitlines()]
    assert rows == tshark_rows(DATA / "small.pcap", "frame.time_epoch", "frame.len")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["consume", "--from", "now", "--to", "-1h"], "is after --to"),
        (["snapshot", "create", "--from", "now", "--to", "-1h"], "is after --to"),
        (["consume", "--node", "{node}-typo", "--from", FROM], "unknown node '{node}-typo'"),
        (["snapshot", "create", "--node", "{node}-typo", "--from", FROM, "--to", "now"], "unknown node"),
        (["pcap", "export", "--from", FROM, "-o", "/nonexistent-dir/x.pcapng"], "does not exist"),
        (
            ["snapshot", "export", "no-such-snap", "-o", "{tmp}/x.pcapng"],
            "unknown snapshot id 'no-such-snap'",
        ),
        (["snapshot", "show", "no-such-snap"], "unknown snapshot id 'no-such-snap'"),
        (["snapshot", "verify", "no-such-snap"], "unknown snapshot id 'no-such-snap'"),
        (["snapshot", "delete", "no-such-snap", "--force"], "unknown snapshot id 'no-such-snap'"),
        (
            ["pcap", "export", "--from", FROM, "--source", "snapshot:no-such", "-o", "-"],
            "unknown snapshot id",
        ),
    ],
)
def test_bad_input_with_kafka_is_one_line(
    kenv: dict[str, str], node_name: str, tmp_path: Path, argv: list[str], message: str
) -> None:
    if "{node}" in " ".join(argv):
        _import(kenv, DATA / "small.pcap", node_name)
    args = [a.replace("{node}", node_name).replace("{tmp}", str(tmp_path)) for a in argv]
    p = rawcap(*args, env=kenv)
    err = p.stderr.decode().strip()
    assert p.returncode == 2, err
    assert err.startswith("rawcap: error: ") and message.replace("{node}", node_name) in err, err
    assert len(err.splitlines()) == 1, err
    assert p.stdout == b"" and not [f for f in tmp_path.rglob("*") if f.is_file()]  # nothing written


def test_consume_follow_tails_new_batches(kenv: dict[str, str], node_name: str, stack: Any) -> None:
    """``--follow`` prints batches that arrive after it started, as they arrive."""
    import queue
    import threading
    import time

    proc = subprocess.Popen(
        [*RAWCAP, "consume", "--node", node_name, "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **kenv},
    )
    got: queue.Queue[bytes] = queue.Queue()
    out = proc.stdout
    assert out is not None

    def pump() -> None:
        for line in iter(out.readline, b""):
            got.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        time.sleep(2)
        lines: list[bytes] = []
        for seq in (1, 2):
            # Packets from the near future: --follow starts at "now" as of its own start-up,
            # which on a loaded machine may come after this line.
            t0 = time.time_ns() + 30 * 10**9
            pk = [Packet(t0 + i * 1000, 62, 62, 1, 0, _frame(i)) for i in range(5)]
            value = encode_batch(node=node_name, seq=seq, packets=pk, ifaces={1: "eth0"})
            anyio.run(_produce, stack.bootstrap, [(value, t0)], node_name)
            while len(lines) < 5 * seq:
                try:
                    lines.append(got.get(timeout=60))
                except queue.Empty:
                    proc.kill()
                    err = proc.stderr.read() if proc.stderr else b""
                    raise AssertionError(f"no line within 60 s: {err!r}") from None
        docs = [json.loads(x) for x in lines]
        assert [d["node"] for d in docs] == [node_name] * 10 and all(d["iface"] == "eth0" for d in docs)
        assert [d["ts_ns"] for d in docs] == sorted(d["ts_ns"] for d in docs)
    finally:
        proc.terminate()
        proc.wait(30)


def _names_in_partition(prefix: str, partition: int, count: int, partitions: int = 6) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < count:
        name = f"{prefix}-{i}"
        if node_partition(name, partitions) == partition:
            out.append(name)
        i += 1
    return out


def _batches(node: str, t0: int, step: int, n_batches: int, per_batch: int,
             size: int = 60) -> list[tuple[bytes, int]]:
    """``n_batches`` batches of ``node``, packets of ``size`` bytes (random after the
    headers, so zstd cannot shrink them) every ``step`` ns from ``t0``."""
    vals = []
    for k in range(n_batches):
        pk = [
            Packet(t0 + (k * per_batch + i) * step, size, size, 2, 0,
                   (_frame(k * per_batch + i)[:40] + os.urandom(size))[:size])
            for i in range(per_batch)
        ]
        vals.append((encode_batch(node=node, seq=k + 1, packets=pk, ifaces={2: "eth0"}), pk[0].ts_ns))
    return vals


async def test_nodes_sharing_a_partition_with_newer_data_merge_in_time_order(
    kenv: dict[str, str], node_name: str, stack: Any, tmp_path: Path
) -> None:
    """The hard case for a watermark merge: in one partition a third node's batches from
    *now* come first, then all of node A's (older) batches, then all of node B's, whose
    packets interleave with A's; A alone is more than one fetch (8 MiB). Export of A and B
    must still be in time order."""
    newer, a, b = _names_in_partition(node_name, 3, 3)
    now = time_ns()
    t0 = now - 30 * 60 * 10**9
    await _produce(stack.bootstrap, _batches(newer, now - 10**9, 1_000, 5, 50), newer)
    # 12 x 40 packets of 28 kB (random): 13 MB per node, more than one 8 MiB fetch
    await _produce(stack.bootstrap, _batches(a, t0, 2_000_000, 12, 40, 1400 * 20), a)
    await _produce(stack.bootstrap, _batches(b, t0 + 1_000_000, 2_000_000, 12, 40, 1400 * 20), b)
    out = tmp_path / "ab.pcapng"
    p = await anyio.to_thread.run_sync(
        lambda: rawcap("pcap", "export", "--node", f"{a},{b}", "--from", format_ns(t0 - 10**9),
                       "--to", format_ns(t0 + 10**10), "-o", str(out), env=kenv)
    )
    assert p.returncode == 0, p.stderr.decode()
    recs = records(out)
    assert len(recs) == 2 * 12 * 40, p.stderr.decode()
    stamps = [r.ts_ns for r in recs]
    assert stamps == sorted(stamps)
    assert [r.iface for r in recs[:4]] == [f"{a}:eth0", f"{b}:eth0", f"{a}:eth0", f"{b}:eth0"]
    assert not wireshark_warnings(out)


async def test_another_nodes_corrupt_batch_is_not_reported_for_this_node(
    kenv: dict[str, str], node_name: str, stack: Any
) -> None:
    """A batch whose header does not decode is attributed by its Kafka key: a read of node A
    skips (and does not DLQ) the garbage of node B sharing A's partition, and reports A's own."""
    a, b = _names_in_partition(node_name, 2, 2)
    now = time_ns()
    await _produce(stack.bootstrap, _batches(a, now - 10**9, 1_000, 2, 10), a)
    await _produce(stack.bootstrap, [(b"not a batch at all", now)], b)
    p = await anyio.to_thread.run_sync(lambda: rawcap("consume", "--node", a, "--from", "-5m", env=kenv))
    assert p.returncode == 0, p.stderr.decode()
    assert len(p.stdout.splitlines()) == 20
    assert b"corrupt" not in p.stderr
    await _produce(stack.bootstrap, [(b"also not a batch", now)], a)
    p = await anyio.to_thread.run_sync(lambda: rawcap("consume", "--node", a, "--from", "-5m", env=kenv))
    assert p.returncode == 0 and b"1 corrupt batch(es) skipped" in p.stderr, p.stderr.decode()
