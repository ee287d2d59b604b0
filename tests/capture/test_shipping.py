"""Shipping: nothing lost through a broker outage; the FIFO stays in budget and counts loss.

The agent runs as a real process in the root namespace (so it reaches the test stack's
Kafka) and captures inside a test namespace with ``--netns``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from capture._fifo import STATE_EVERY_BATCHES
from capture._shipper import IN_FLIGHT
from rawcap.stack import Stack
from schemas import decode_batch, decode_header
from tests.netns import VethPair

from .helpers import PY, RAWCAP, TRAFFIC, Proc, fifo_last_seq, kafka_records, read_fifo

pytestmark = pytest.mark.integration


async def _node_batches(bootstrap: str, node: str) -> list[tuple[int, int, int, int]]:
    """(seq, count, kafka timestamp, first_ns) of every batch of ``node`` in rawcap.packets."""
    out = []
    for ts, value in await kafka_records(bootstrap, node):
        h, _ = decode_header(value)
        assert h.node == node
        out.append((h.seq, h.count, ts, h.first_ns))
    return out


def _disk_use(d: Path) -> int:
    total = 0
    for f in d.glob("*.rcsg"):
        try:
            total += f.stat().st_size
        except FileNotFoundError:  # recycled between listing and stat
            pass
    return total


def _state(buf: Path, node: str) -> dict:
    try:
        return json.loads((buf / node / "shipped.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


#: ``python -c`` sender of HOST PORT COUNT datagrams of 1400 random bytes, one way (an echo
#: would repeat the payload, which zstd then finds: not random).
_SEND_RANDOM = ("import os, socket, sys, time\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for i in range(int(sys.argv[3])):\n"
                "    s.sendto(os.urandom(1400), (sys.argv[1], int(sys.argv[2])))\n"
                "    time.sleep(0.0005)\n")


def _udp_sink(net: VethPair, port: int) -> Proc:
    """A socket in namespace a that takes datagrams on ``port`` and never reads them."""
    sink = Proc([PY, "-c", "import socket, sys, time; s = socket.socket(socket.AF_INET, "
                 "socket.SOCK_DGRAM); s.bind(('', int(sys.argv[1]))); print('serving', flush=True); "
                 "time.sleep(1e6)", str(port)], ns=net.a)
    sink.wait_for("serving", stdout=True)
    return sink


def test_no_loss_through_broker_outage(stack: Stack, tmp_path: Path) -> None:
    node = f"outage-{uuid.uuid4().hex[:6]}"
    buf = tmp_path / "buf"
    env = {"RAWCAP_BOOTSTRAP": stack.bootstrap, "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.3s"}
    with VethPair("rcout") as net:
        srv = Proc([PY, TRAFFIC, "server", "7001"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                    "--node", node, "--buffer-dir", str(buf), "--no-procs"], env=env)
        traffic = None
        try:
            cap.wait_for("capture running")
            cap.wait_for("shipper connected", timeout=60)
            traffic = Proc([PY, TRAFFIC, "client", net.a.ip, "7001", "--sizes", "200,1400",
                            "--rounds", "100000", "--interval", "0.05"], ns=net.b)
            time.sleep(4)
            before = _state(buf, node)
            assert before.get("acked_seq", 0) > 0, f"nothing shipped before the outage: {before}"
            assert stack.stop_kafka(), "the broker did not stop"
            down_at = time.monotonic()
            host, port = stack.bootstrap.rsplit(":", 1)
            with pytest.raises(OSError):  # really gone, not just slow
                socket.create_connection((host, int(port)), timeout=2).close()
            time.sleep(30)
            during = _state(buf, node)
            during["on_disk"] = fifo_last_seq(buf / node)
            stack.start_kafka()
            outage = time.monotonic() - down_at
            time.sleep(4)
            traffic.stop()
            traffic = None
            # wait for the shipper to catch up with everything written
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = _state(buf, node)
                caught_up = st and st["acked_seq"] == st["next_seq"] - 1
                if caught_up and st["acked_seq"] > during.get("acked_seq", 0):
                    break
                time.sleep(0.5)
            assert cap.stop() == 0, cap.text
        finally:
            if traffic:
                traffic.stop()
            srv.stop()
            cap.stop()
    summary = cap.summary()
    last = int(summary["seq"].split("-")[1])
    assert outage >= 30
    assert summary["lost_batches"] == "0" and summary["lost_packets"] == "0", cap.text
    assert summary["unshipped"] == "0" and summary["shipped"] != "0", cap.text
    # while the broker was down, batches kept being written but not acknowledged
    assert during["on_disk"] > during["acked_seq"] + 20, during
    # ... and no more than what was in flight (or not yet in shipped.json) got acknowledged
    assert during["acked_seq"] <= before["acked_seq"] + IN_FLIGHT + STATE_EVERY_BATCHES, \
        (before, during)
    got = asyncio.run(_node_batches(stack.bootstrap, node))
    seqs = [g[0] for g in got]
    dupes = sorted({q for q in seqs if seqs.count(q) > 1})
    missing = sorted(set(range(1, last + 1)) - set(seqs))
    assert seqs == list(range(1, last + 1)), (
        f"Kafka holds {len(seqs)} batches for 1..{last}: duplicates {dupes[:20]}, "
        f"missing {missing[:20]}\n{cap.text[-3000:]}")
    assert sum(g[1] for g in got) == int(summary["packets"])
    # Memory first: what Kafka acknowledged in time never touched the disk; the outage's
    # batches did (they were shipped from there), and nothing was left behind.
    on_disk = [b.header.seq for b in read_fifo(buf / node)]
    assert 20 < len(on_disk) < len(got), (len(on_disk), len(got))
    assert set(on_disk) <= set(seqs)
    # Kafka timestamp = first packet time of the batch, in ms
    assert all(ts == first_ns // 1_000_000 for _, _, ts, first_ns in got)


def test_fifo_bound_and_loss_count(tmp_path: Path) -> None:
    """Kafka unreachable, tiny budget: disk stays within budget + one segment and every
    recycled batch is counted as lost."""
    node = "fifo"
    buf = tmp_path / "buf"
    budget, segment = 256 * 1024, 64 * 1024
    env = {"RAWCAP_BOOTSTRAP": "127.0.0.1:9", "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.1s",
           "RAWCAP_CAPTURE_BATCH_MAX_BYTES": "16Ki", "RAWCAP_CAPTURE_SEGMENT_SIZE": str(segment)}
    with VethPair("rcfifo") as net:
        srv = Proc([PY, TRAFFIC, "server", "7002"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                    "--node", node, "--buffer-dir", str(buf), "--storage-size", str(budget),
                    "--ring-block-size", "64Ki", "--ring-block-count", "256", "--no-procs"], env=env)
        peak = 0
        try:
            cap.wait_for("capture running")
            traffic = Proc([PY, TRAFFIC, "client", net.a.ip, "7002", "--sizes", "1400",
                            "--rounds", "1500", "--random", "--no-tcp", "--interval", "0.002"], ns=net.b)
            while traffic.p.poll() is None:
                peak = max(peak, _disk_use(buf / node))
                time.sleep(0.05)
            assert traffic.p.returncode == 0
            time.sleep(1)
            assert cap.stop() == 0, cap.text
        finally:
            srv.stop()
            cap.stop()
    summary = cap.summary()
    on_disk = read_fifo(buf / node)
    segments = sorted(p.name for p in (buf / node).glob("*.rcsg"))
    size = sum(p.stat().st_size for p in (buf / node).glob("*.rcsg"))
    assert size <= budget + segment and peak <= budget + segment, (size, peak)
    # requests + echoes; on a starved machine the kernel may drop some, and says so
    assert int(summary["packets"]) + int(summary["kernel_drops"]) == 2 * 1500, cap.text
    assert segments[0] != "00000000000000000001.rcsg", "the oldest segment was not recycled"
    first_kept = on_disk[0].header.seq
    last = int(summary["seq"].split("-")[1])
    assert [b.header.seq for b in on_disk] == list(range(first_kept, last + 1))
    recycled_batches = first_kept - 1
    recycled_packets = int(summary["packets"]) - sum(b.header.count for b in on_disk)
    assert int(summary["lost_batches"]) == recycled_batches > 0
    assert int(summary["lost_packets"]) == recycled_packets
    state = json.loads((buf / node / "shipped.json").read_text())
    assert state["lost_batches"] == recycled_batches and state["acked_seq"] == 0
    assert state["lost_packets"] == recycled_packets and state["lost_bytes"] > 0
    # every recycle that dropped unshipped batches said so in the log, with their range
    logged = [ln for ln in cap.lines if "recycled" in ln and "unshipped batches" in ln]
    assert logged, cap.text
    assert sum(int(m) for ln in logged for m in re.findall(r"recycled (\d+) unshipped", ln)) \
        == recycled_batches


def test_restart_after_lost_ack_state_does_not_duplicate(stack: Stack, tmp_path: Path) -> None:
    """A crash between Kafka's ack and shipped.json: the restarted agent finds the batches
    already in Kafka and does not send them again."""
    node = f"crash-{uuid.uuid4().hex[:6]}"
    buf = tmp_path / "buf"
    env = {"RAWCAP_BOOTSTRAP": stack.bootstrap, "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.2s"}
    with VethPair("rccrash") as net:
        srv = Proc([PY, TRAFFIC, "server", "7004"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        try:
            for attempt in range(2):
                cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                            "--node", node, "--buffer-dir", str(buf), "--no-procs"], env=env)
                cap.wait_for("shipper connected", timeout=60)
                r = net.b.run(PY, TRAFFIC, "client", net.a.ip, "7004", "--sizes", "300",
                              "--rounds", "20", "--interval", "0.1", check=False)
                assert r.returncode == 0, r.stderr
                time.sleep(0.5)
                assert cap.stop() == 0, cap.text
                if attempt == 0:
                    state = _state(buf, node)
                    assert state["acked_seq"] >= 6, state
                    shipped = state["acked_seq"]
                    state["acked_seq"] -= 5  # as if the agent died before recording 5 acks
                    (buf / node / "shipped.json").write_text(json.dumps(state))
        finally:
            srv.stop()
    assert "batches already in Kafka, not resending" in cap.text
    assert f"from_seq={shipped - 4} to_seq={shipped}" in cap.text
    summary = cap.summary()
    last = int(summary["seq"].split("-")[1])
    seqs = [g[0] for g in asyncio.run(_node_batches(stack.bootstrap, node))]
    assert seqs == list(range(1, last + 1)), seqs


def test_incompressible_traffic_ships_intact(stack: Stack, tmp_path: Path) -> None:
    """Random payload: batches go out with codec none, full one-block ones laid out in
    place (capture/_batcher.Framed). Kafka checks each record's crc on produce; here every
    batch must decode and hold exactly the packets sent."""
    node = f"plain-{uuid.uuid4().hex[:6]}"
    env = {"RAWCAP_BOOTSTRAP": stack.bootstrap, "RAWCAP_CAPTURE_BATCH_MAX_BYTES": "64Ki",
           "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.2s"}
    rounds = 1200
    with VethPair("rcplain") as net:
        sink = _udp_sink(net, 7999)
        cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                    "--node", node, "--buffer-dir", str(tmp_path / "buf"), "--no-procs",
                    "--ring-block-size", "64Ki", "--ring-block-count", "256"], env=env)
        try:
            cap.wait_for("shipper connected", timeout=60)
            r = net.b.run(PY, "-c", _SEND_RANDOM, net.a.ip, "7999", str(rounds), check=False)
            assert r.returncode == 0, r.stderr
            time.sleep(1)
            assert cap.stop() == 0, cap.text
        finally:
            sink.stop()
            cap.stop()
    summary = cap.summary()
    assert summary["unshipped"] == "0" and summary["lost_batches"] == "0", cap.text
    batches = [decode_batch(v) for _, v in asyncio.run(kafka_records(stack.bootstrap, node))]
    assert [b.header.seq for b in batches] == list(range(1, len(batches) + 1))
    packets = [p for b in batches for p in b.packets]
    assert len(packets) == int(summary["packets"]) == rounds - int(summary["kernel_drops"])
    assert all(len(p.data) == 14 + 20 + 8 + 1400 for p in packets)
    full_plain = [b for b in batches if b.header.codec == "none" and b.header.body_len >= 56 << 10]
    assert full_plain, [(b.header.codec, b.header.body_len) for b in batches]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(body: str, name: str, node: str) -> float:
    prefix = f'{name}{{node="{node}"}} '
    return float(next(ln for ln in body.splitlines() if ln.startswith(prefix)).split()[-1])


def test_overload_loss_split_is_exact(stack: Stack, tmp_path: Path) -> None:
    """More traffic than the buffer holds while Kafka is away: the summary and /metrics split
    the loss into kernel ring drops, batches recycled before Kafka took them and batches
    still unshipped, and the split equals sent minus what Kafka holds, exactly.

    The budget (256 KiB, disk first) is far below the 1.4 MB sent during a real broker stop,
    so recycling is certain; the drops are whatever this machine's load makes them."""
    node = f"split-{uuid.uuid4().hex[:6]}"
    buf = tmp_path / "buf"
    sent = 1500
    port = _free_port()
    env = {"RAWCAP_BOOTSTRAP": stack.bootstrap, "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.1s",
           "RAWCAP_CAPTURE_BATCH_MAX_BYTES": "16Ki", "RAWCAP_CAPTURE_SEGMENT_SIZE": "64Ki",
           "RAWCAP_CAPTURE_MEMORY_BUFFER": "0"}
    with VethPair("rcsplit") as net:
        sink = _udp_sink(net, 7998)
        cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                    "--node", node, "--buffer-dir", str(buf), "--no-procs",
                    "--storage-size", "256Ki", "--metrics-port", str(port),
                    "--ring-block-size", "64Ki", "--ring-block-count", "64"], env=env)
        try:
            cap.wait_for("shipper connected", timeout=60)
            assert stack.stop_kafka(), "the broker did not stop"
            try:
                r = net.b.run(PY, "-c", _SEND_RANDOM, net.a.ip, "7998", str(sent), check=False)
                assert r.returncode == 0, r.stderr
                # wait until the buffer recycled unshipped batches (never silent: it logs)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not any(
                        "before Kafka took them" in ln for ln in cap.lines):
                    time.sleep(0.2)
            finally:
                stack.start_kafka()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the shipper delivers what is left
                st = _state(buf, node)
                if st and st["acked_seq"] == st["next_seq"] - 1 and st["acked_seq"] > 0:
                    break
                time.sleep(0.5)
            # /metrics once the stats loop has seen it all: the same split, live
            deadline = time.monotonic() + 30
            while True:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
                split = {k: _metric(body, f"rawcap_capture_{k}", node) for k in (
                    "kernel_packets", "kernel_drops", "shipped_packets", "recycled_packets",
                    "unshipped_packets")}
                if (split["kernel_packets"] == sent and split["unshipped_packets"] == 0) or \
                        time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert cap.stop() == 0, cap.text
        finally:
            sink.stop()
            cap.stop()
    s = {k: int(v) for k, v in cap.summary().items() if v.isdigit()}
    delivered = sum(decode_header(v)[0].count for _, v in asyncio.run(kafka_records(stack.bootstrap, node)))
    assert s["kernel_packets"] == sent, cap.text  # one way, UDP only: the filter passes nothing else
    assert s["lost_packets"] > 0, cap.text
    assert s["shipped_packets"] == delivered > 0, cap.text
    assert s["kernel_drops"] + s["lost_packets"] + s["unshipped_packets"] == sent - delivered, cap.text
    assert s["kernel_packets"] == s["kernel_drops"] + s["packets"]
    assert split == {"kernel_packets": sent, "kernel_drops": s["kernel_drops"],
                     "shipped_packets": delivered, "recycled_packets": s["lost_packets"],
                     "unshipped_packets": 0}, (split, cap.text)
