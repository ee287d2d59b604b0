"""Operations: clear one-line errors, /metrics, summary line, sequence numbers across restarts."""

from __future__ import annotations

import os
import signal
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


def test_batch_too_big_for_a_kafka_record_is_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run([RAWCAP, "capture", "--iface", "lo", "--no-kafka", "--ring-block-size", "8Mi",
                        "--buffer-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "rawcap: error: capture.batch.maxBytes and capture.ring.blockSize must stay below 7.75 MiB: "
        "a batch of 8388608 bytes would not fit rawcap.packets' max.message.bytes (8388608)"]


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def _check_rss(body: str, now: dict[str, int]) -> None:
    """The RSS gauges: present, split anon/file, and close to what the kernel says now (the
    stats loop set them within the last second; the process is quiet by then)."""
    got = {ln.split("{")[0]: float(ln.split()[-1]) for ln in body.splitlines()
           if ln.startswith(("rawcap_capture_rss_anon_bytes{", "rawcap_capture_rss_file_bytes{"))}
    anon, file_ = got["rawcap_capture_rss_anon_bytes"], got["rawcap_capture_rss_file_bytes"]
    # anon: interpreter, modules and buffers; file: libLLVM (bcc) and the 32 MiB TPACKET ring
    assert 8 << 20 < anon < 512 << 20, anon
    assert 32 << 20 < file_ < 1 << 30, file_
    assert abs(anon - now["RssAnon"] * 1024) < max(0.25 * anon, 16 << 20), (anon, now)
    assert abs(file_ - now["RssFile"] * 1024) < max(0.25 * file_, 16 << 20), (file_, now)


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_bad_codec_is_one_clear_line(tmp_path: Path, how: str) -> None:
    """capture.codec takes zstd or none; anything else stops the agent before it opens a
    ring, with one line naming the key and the allowed values, from every source."""
    argv = [RAWCAP, "capture", "--iface", "lo", "--no-kafka", "--buffer-dir", str(tmp_path)]
    env = dict(os.environ)
    if how == "flag":
        argv += ["--codec", "lz4"]
    elif how == "env":
        env["RAWCAP_CAPTURE_CODEC"] = "lz4"
    else:
        values = tmp_path / "values.yaml"
        values.write_text("capture:\n  codec: lz4\n")
        argv[1:1] = ["--config", str(values)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    source = {"flag": "override", "env": "env RAWCAP_CAPTURE_CODEC", "file": str(tmp_path / "values.yaml")}
    assert line.startswith(f"rawcap: error: {source[how]}"), line
    assert line.endswith("capture.codec = 'lz4' is invalid: expected one of zstd, none"), line
    assert not list(tmp_path.glob("*/*.rcsg")), "nothing may be written before the check"


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
                _check_rss(body, _status_kib(cap.p.pid))
                # SIGTERM the first time, SIGINT (Ctrl-C) the second: both flush and exit 0
                assert cap.stop(signal.SIGTERM if round_ == 0 else signal.SIGINT) == 0, cap.text
                assert "Traceback" not in cap.text
                summary = cap.summary()
                assert int(summary["packets"]) > 0
                for name in ("rawcap_capture_packets_total", "rawcap_capture_kernel_drops",
                             "rawcap_capture_batches_written_total", "rawcap_capture_buffer_bytes",
                             "rawcap_capture_memory_bytes",
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


def test_duration_flushes_and_exits_zero(tmp_path: Path) -> None:
    """``--duration`` ends the run by itself, after flushing what the ring still held."""
    buf = tmp_path / "buf"
    with VethPair("rcdur") as net:
        srv = Proc([PY, TRAFFIC, "server", "7011"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        try:
            started = time.monotonic()
            cap = Proc([RAWCAP, "capture", "--iface", net.b.iface, "--node", "dur", "--no-kafka",
                        "--buffer-dir", str(buf), "--duration", "3"], ns=net.b)
            cap.wait_for("capture running")
            r = net.b.run(PY, TRAFFIC, "client", net.a.ip, "7011", "--sizes", "100", check=False)
            assert r.returncode == 0, r.stderr
            assert cap.p.wait(30) == 0, cap.text
            elapsed = time.monotonic() - started
            cap.stop()
        finally:
            srv.stop()
    summary = cap.summary()
    assert 3.0 <= float(summary["seconds"]) < 10 and elapsed < 30, summary
    # the last packets (sent just before the end) were flushed into the buffer
    assert int(summary["packets"]) >= 8
    assert sum(b.header.count for b in read_fifo(buf / "dur")) == int(summary["packets"])


def _with_hidden(path: str, argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace where ``path`` is an empty tmpfs."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs rawcap-test "{path}" && exec "$@"', "sh", *argv]


@pytest.mark.parametrize(("hidden", "needle"), [
    ("/lib/modules", "kernel headers not found"),
    ("/usr/lib/python3/dist-packages", "bcc is not importable"),
])
def test_missing_kernel_headers_or_bcc_is_one_clear_line(tmp_path: Path, hidden: str,
                                                         needle: str) -> None:
    r = subprocess.run(_with_hidden(hidden, [RAWCAP, "capture", "--iface", "lo", "--no-kafka",
                                             "--buffer-dir", str(tmp_path), "--duration", "1"]),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rawcap: error: ") and needle in lines[0], r.stderr
