"""/ready and /live on the agent's metrics port (the DaemonSet's probes, docs/kubernetes.md).

/ready turns 200 only once the eBPF programs are compiled, the ring is up with the filter
attached and (with Kafka) the node's capture filter from rawcap.control is applied; traffic
sent the moment it is ready is in the capture. /live is 200 while the agent works.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from capture.agent import STALL_AFTER, STARTUP_LIMIT, liveness
from rawcap.config import Config
from rawcap.packet import parse_l4
from tests.netns import VethPair

from .helpers import PY, RAWCAP, TRAFFIC, Proc, read_fifo

PORT = 7041


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _poll_ready(cap: Proc, port: int, timeout: float = 90) -> list[tuple[int, str]]:
    """Every answer of /ready until the first 200: (status, reason); 0 = no answer."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = _get(f"http://127.0.0.1:{port}/ready")
        seen.append((code, body.strip() if code else "no answer"))
        if code == 200:
            return seen
        assert cap.p.poll() is None, cap.text
        time.sleep(0.05)
    raise AssertionError(f"/ready not 200 within {timeout} s; last answers {seen[-3:]}\n{cap.text}")


@pytest.mark.integration
def test_ready_only_once_capturing_and_traffic_right_after_is_captured(tmp_path: Path) -> None:
    port = _free_port()
    buf = tmp_path / "buf"
    with VethPair("rcrdy") as net:
        srv = Proc([PY, TRAFFIC, "server", str(PORT)], ns=net.a)
        srv.wait_for("serving", stdout=True)
        cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface, "--node", "rdy",
                    "--buffer-dir", str(buf), "--no-kafka", "--metrics-port", str(port)])
        try:
            seen = _poll_ready(cap, port)
            # the very first thing after ready: one connection, one datagram
            r = net.b.run(PY, TRAFFIC, "client", net.a.ip, str(PORT), "--sizes", "200", check=False)
            assert r.returncode == 0, r.stderr
            live = _get(f"http://127.0.0.1:{port}/live")
            assert cap.stop() == 0, cap.text
        finally:
            srv.stop()
    # the metrics port answers while the eBPF programs compile (2-6 s): 503 with the reason,
    # then the ring is opened, then 200; never back
    reasons = [reason for _code, reason in seen]
    assert reasons[-1] == f"capturing on {net.b.iface}" and seen[-1][0] == 200
    phases = ["no answer", "starting: compiling the eBPF programs", "starting: opening the ring"]
    assert all(code == (0 if r == "no answer" else 503) for code, r in seen[:-1]), seen
    assert [phases.index(r) for r in reasons[:-1]] == sorted(phases.index(r) for r in reasons[:-1])
    assert reasons.count("starting: compiling the eBPF programs") >= 5, reasons[:8]  # >= 0.25 s of it
    assert any("capture running" in line for line in cap.lines)
    assert live == (200, "ok\n")
    frames = [bytes(p.data) for b in read_fifo(buf / "rdy") for p in b.packets]
    ours = [(f, l4) for f in frames if (l4 := parse_l4(f)) is not None and PORT in (l4.sport, l4.dport)]
    # TCP flags: byte 13 of the TCP header, which starts at payload_off - header length; the
    # client's SYN is the one packet to the server port whose payload is empty with SYN set
    syns = [l4 for f, l4 in ours if l4.proto == 6 and l4.dport == PORT and _tcp_flags(f) & 0x12 == 0x02]
    assert syns, "the first connection after /ready said 200 is missing its SYN"
    assert any(l4.proto == 17 for _f, l4 in ours), "the UDP datagram sent after ready is missing"


def _tcp_flags(frame: bytes) -> int:
    ihl = (frame[14] & 0x0F) * 4  # IPv4 (the veth pair's traffic client uses IPv4)
    return frame[14 + ihl + 13]


@pytest.mark.integration
def test_not_ready_until_the_capture_filters_are_read(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """With Kafka unreachable the agent captures into its buffer but stays not ready, saying
    why; with the broker it turns ready once rawcap.control has been read."""
    cfg = make_config()
    closed = _free_port()
    for bootstrap, want_ready in ((f"127.0.0.1:{closed}", False), (cfg.get("kafka.bootstrap"), True)):
        port = _free_port()
        with VethPair("rcrdk") as net:
            cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                        "--node", "rdyk", "--buffer-dir", str(tmp_path / "buf"), "--no-procs",
                        "--metrics-port", str(port)], env={"RAWCAP_BOOTSTRAP": bootstrap})
            try:
                if want_ready:
                    _poll_ready(cap, port)
                else:
                    cap.wait_for("capture running")
                    time.sleep(3)
                    assert _get(f"http://127.0.0.1:{port}/ready") == (
                        503, "waiting for the capture filters in rawcap.control (Kafka)\n")
                    assert _get(f"http://127.0.0.1:{port}/live") == (200, "ok\n")
            finally:
                assert cap.stop() == 0, cap.text


def test_liveness_catches_a_stalled_capture() -> None:
    # starting: alive while compiling, dead when the start hangs past the limit
    assert liveness(5, "compiling the eBPF programs", False, None, None) == (
        True, "starting: compiling the eBPF programs")
    assert liveness(STARTUP_LIMIT + 1, "opening the ring", False, None, None) == (
        False, f"still opening the ring after {STARTUP_LIMIT + 1:.0f} s")
    # running: the ring thread goes round every 0.2 s, the event loop every second
    assert liveness(600, "capturing", False, 0.2, 1.0) == (True, "ok")
    assert liveness(600, "capturing", False, STALL_AFTER + 5, 1.0) == (
        False, f"ring thread stalled for {STALL_AFTER + 5:.0f} s")
    assert liveness(600, "capturing", False, 0.1, STALL_AFTER + 2) == (
        False, f"event loop stalled for {STALL_AFTER + 2:.0f} s")
    # flushing on SIGTERM: the ring thread has ended on purpose
    assert liveness(600, "capturing", True, STALL_AFTER * 3, 1.0) == (True, "stopping")


def test_metrics_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        busy = s.getsockname()[1]
        with VethPair("rcrdp") as net:
            r = subprocess.run([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                                "--no-kafka", "--buffer-dir", str(tmp_path), "--duration", "1",
                                "--metrics-port", str(busy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rawcap: error: metrics.port: cannot listen on") and "Traceback" not in r.stderr
