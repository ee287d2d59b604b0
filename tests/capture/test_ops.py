"""Operations: clear one-line errors, /metrics, summary line, sequence numbers across restarts."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.netns import VethPair

from .helpers import PY, RAWCAP, TRAFFIC, Proc, read_fifo

pytestmark = pytest.mark.integration


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_interface_is_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run([RAWCAP, "capture", "--iface", "nosuch0", "--no-kafka",
                        "--buffer-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["rawcap: error: interface 'nosuch0' does not exist on this node (capture.iface)"]


def test_missing_netns_and_bad_duration(tmp_path: Path) -> None:
    r = subprocess.run([RAWCAP, "capture", "--netns", "rc-nosuch", "--iface", "lo", "--no-kafka",
                        "--buffer-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "rawcap: error: network namespace 'rc-nosuch' does not exist")
    assert "Traceback" not in r.stderr


def test_metrics_summary_and_restart_continues_sequence(tmp_path: Path) -> None:
    buf = tmp_path / "buf"
    port = _free_port()
    env = {"RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.2s"}
    with VethPair("rcops") as net:
        srv = Proc([PY, TRAFFIC, "server", "7010"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        try:
            for round_ in range(2):
                cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                            "--node", "ops", "--buffer-dir", str(buf), "--no-kafka",
                            "--metrics-port", str(port)], env=env)
                cap.wait_for("capture running")
                r = net.b.run(PY, TRAFFIC, "client", net.a.ip, "7010", "--sizes", "100,1000",
                              "--rounds", "3", check=False)
                assert r.returncode == 0, r.stderr
                time.sleep(1.5)  # stats loop refreshes gauges every second
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
                assert cap.stop() == 0, cap.text
                summary = cap.summary()
                assert int(summary["packets"]) > 0
                for name in ("rawcap_capture_packets_total", "rawcap_capture_kernel_drops",
                             "rawcap_capture_batches_written_total", "rawcap_capture_buffer_bytes",
                             "rawcap_capture_lost_packets", "rawcap_capture_ship_lag_seconds"):
                    assert f'{name}{{node="ops"}}' in body, name
                line = next(ln for ln in body.splitlines()
                            if ln.startswith('rawcap_capture_packets_total{node="ops"}'))
                assert float(line.split()[-1]) > 0
                if round_ == 0:
                    first_last = int(summary["seq"].split("-")[1])
                else:
                    assert int(summary["seq"].split("-")[0]) == first_last + 1
        finally:
            srv.stop()
    seqs = [b.header.seq for b in read_fifo(buf / "ops")]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > first_last
