"""The forensics commands end to end on the node-buffer source (no broker needed): exports
judged by tshark/capinfos, snapshots (local store) with verify, and every bad input."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from rawcap.pcap import PcapWriter

from .helpers import DATA, RAWCAP, rawcap, records, tshark_rows, wireshark_warnings, write_buffer

FROM = "2026-11-23T00:00:00Z"


@pytest.fixture
def buf(tmp_path: Path) -> dict[str, str]:
    """Two nodes: the real capture, and the same capture shifted by 0.5 ms."""
    write_buffer(tmp_path / "buf", "node-a", DATA / "small.pcap", segments=1)
    recs = records(DATA / "small.pcap")
    shifted = tmp_path / "b.pcap"
    w = PcapWriter()
    shifted.write_bytes(
        w.header() + b"".join(w.packets([(r.ts_ns + 500_000, r.caplen, r.origlen, r.data) for r in recs]))
    )
    write_buffer(tmp_path / "buf", "node-b", shifted, segments=1)
    return {
        "RAWCAP_CAPTURE_BUFFER_DIR": str(tmp_path / "buf"),
        "RAWCAP_SNAPSHOTS_URL": str(tmp_path / "snaps"),
    }


def test_export_one_node_equals_tcpdump(buf: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "a.pcapng"
    p = rawcap(
        "pcap", "export", "--source", "local", "--node", "node-a", "--from", FROM, "-o", str(out), env=buf
    )
    assert p.returncode == 0, p.stderr
    assert wireshark_warnings(out) == []
    assert tshark_rows(out) == tshark_rows(DATA / "small.pcap")
    assert [bytes(r.data) for r in records(out)] == [bytes(r.data) for r in records(DATA / "small.pcap")]
    assert not list(tmp_path.glob(".a.pcapng.*"))  # the temporary name is gone
    classic = tmp_path / "a.pcap"
    p = rawcap(
        "pcap",
        "export",
        "--source",
        "local",
        "--node",
        "node-a",
        "--from",
        FROM,
        "--format",
        "pcap",
        "-o",
        str(classic),
        env=buf,
    )
    assert p.returncode == 0 and wireshark_warnings(classic) == []
    assert classic.read_bytes()[24:] == (DATA / "small.pcap").read_bytes()[24:]


def test_two_nodes_merge_in_time_order_into_stdout(buf: dict[str, str]) -> None:
    p = rawcap("pcap", "export", "--source", "local", "--from", FROM, "--comment-node", "-o", "-", env=buf)
    assert p.returncode == 0, p.stderr
    rows = tshark_rows("-", "frame.time_epoch", "frame.interface_name", "frame.comment", stdin=p.stdout)
    assert len(rows) == 2 * 53
    times = [float(r[0]) for r in rows]
    assert times == sorted(times)
    assert {r[1] for r in rows} == {"node-a:eth0", "node-b:eth0"}
    assert all(r[2] == "node=" + r[1].split(":")[0] for r in rows)
    # ... and the two interleave (each node's packet is followed by the other's).
    assert sum(1 for a, b in itertools.pairwise(rows) if a[1] != b[1]) > 20


def test_filters_and_consume(buf: dict[str, str]) -> None:
    p = rawcap(
        "consume",
        "--source",
        "local",
        "--node",
        "node-a",
        "--from",
        FROM,
        "--json",
        "tcp",
        "port",
        "8080",
        env=buf,
    )
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    want = subprocess.run(
        ["tcpdump", "-nr", str(DATA / "small.pcap"), "tcp port 8080"], capture_output=True, text=True
    ).stdout.splitlines()
    assert len(lines) == len(want) == 26
    assert lines[0]["flags"] == "S" and lines[1]["flags"] == "S." and lines[0]["dport"] == 8080
    p = rawcap(
        "consume", "--source", "local", "--from", FROM, "--proto", "udp", "--host", "10.231.163.1", env=buf
    )
    text = p.stdout.decode().splitlines()
    assert p.returncode == 0 and len(text) == 2 * 5
    assert "node-a 10.231.163.1:39768 > 10.231.163.2:5353 udp len=52" in text[0]


def test_empty_window_is_a_valid_empty_file(buf: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "empty.pcapng"
    p = rawcap(
        "pcap",
        "export",
        "--source",
        "local",
        "--from",
        "2020-01-01T00:00:00Z",
        "--to",
        "2020-01-01T00:05:00Z",
        "-o",
        str(out),
        env=buf,
    )
    assert p.returncode == 0
    assert b"no packets in the window" in p.stderr and len(p.stderr.splitlines()) == 1
    assert tshark_rows(out) == [] and wireshark_warnings(out) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "now", "--to", "-5m", "-o", "{tmp}/x.pcapng"], "is after --to"),
        (["--node", "nope", "-o", "{tmp}/x.pcapng"], "unknown node 'nope'"),
        (["-o", "/nonexistent-dir/x.pcapng"], "directory /nonexistent-dir does not exist"),
        (["-o", "{tmp}"], "is a directory"),
        (["--source", "snapshot:nope", "-o", "{tmp}/x.pcapng"], "unknown snapshot id 'nope'"),
        (["--source", "floppy", "-o", "{tmp}/x.pcapng"], "--source 'floppy' is invalid"),
        (["--from", "yesterday-ish", "-o", "{tmp}/x.pcapng"], "is not a time"),
        (["--pod", "web-(", "-o", "{tmp}/x.pcapng"], "--pod 'web-(' is not a valid regular expression"),
        (["--comment-workload", "--format", "pcap", "-o", "{tmp}/x.pcapng"], "--comment-workload needs"),
    ],
)
def test_bad_input_is_one_line(buf: dict[str, str], tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--source" not in argv:
        argv += ["--source", "local"]
    p = rawcap("pcap", "export", *argv, env=buf)
    assert p.returncode == 2
    err = p.stderr.decode().strip()
    assert err.startswith("rawcap: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pcapng").exists()


def test_unreadable_output_dir(buf: dict[str, str], tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    # root ignores directory permissions; a path under a regular file is unwritable for anyone.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (blocker / "x.pcapng", ro / "x.pcapng"):
        p = rawcap("pcap", "export", "--source", "local", "-o", str(target), env=buf)
        if target.parent == ro and p.returncode == 0:
            continue  # root: the mode bits do not stop it
        err = p.stderr.decode().strip()
        assert p.returncode == 2 and err.startswith("rawcap: error: output path"), err
        assert len(err.splitlines()) == 1 and not target.exists()
    assert blocker.read_text() == "x"


def test_disk_full_is_one_line(buf: dict[str, str]) -> None:
    """A write error (here /dev/full as stdout: ENOSPC) ends the export with one line, exit 2."""
    full = {**os.environ, **buf}
    with open("/dev/full", "wb") as dev_full:
        p = subprocess.run(
            [*RAWCAP, "pcap", "export", "--source", "local", "--from", FROM, "-o", "-"],
            stdout=dev_full, stderr=subprocess.PIPE, env=full, timeout=120,
        )
    err = p.stderr.decode().strip()
    assert p.returncode == 2, err
    assert err == "rawcap: error: cannot write the capture: No space left on device", err


def test_sigterm_ends_an_export_into_a_stalled_pipe(tmp_path: Path) -> None:
    """SIGTERM while nobody reads ``-o -`` (a ``| less`` left open): the writer thread is stuck
    in a write() that never returns, and the export must still end at once, exit 130."""
    recs = records(DATA / "small.pcap")
    w, step = PcapWriter(), recs[-1].ts_ns - recs[0].ts_ns + 1000
    big = tmp_path / "big.pcap"  # ~8 MB: far more than a pipe holds
    big.write_bytes(w.header() + b"".join(
        b"".join(w.packets([(r.ts_ns + k * step, r.caplen, r.origlen, r.data) for r in recs]))
        for k in range(500)))
    write_buffer(tmp_path / "buf", "node-s", big, segments=4)
    read_end, write_end = os.pipe()
    capacity = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)
    env = {**os.environ, "RAWCAP_CAPTURE_BUFFER_DIR": str(tmp_path / "buf")}
    p = subprocess.Popen([*RAWCAP, "pcap", "export", "--source", "local", "--from", FROM, "-o", "-"],
                         stdout=write_end, stderr=subprocess.PIPE, env=env)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        while struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\0" * 4))[0] < capacity:
            assert p.poll() is None and time.monotonic() < deadline, "the export never filled the pipe"
            time.sleep(0.05)
        time.sleep(0.5)  # the writer is now blocked in write()
        p.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        rc = p.wait(30)
        took = time.monotonic() - sent
    finally:
        p.kill()
        os.close(read_end)
    err = p.stderr.read().decode() if p.stderr else ""
    assert rc == 130, err
    assert took < 5, f"the export took {took:.1f} s to end after SIGTERM"
    assert "Fatal Python error" not in err and "Traceback" not in err, err


def test_snapshot_lifecycle_local_store(buf: dict[str, str], tmp_path: Path) -> None:
    win = ["--from", FROM, "--to", "2026-11-23T02:53:18.6Z"]
    p = rawcap("snapshot", "create", "--source", "local", *win, "--name", "inc-42", env=buf)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == "inc-42"
    again = rawcap("snapshot", "create", "--source", "local", *win, "--name", "inc-42", env=buf)
    assert again.returncode == 2 and b"already exists" in again.stderr
    show = json.loads(rawcap("snapshot", "show", "inc-42", "--json", env=buf).stdout)
    assert set(show["nodes"]) == {"node-a", "node-b"} and show["window"]["to"].startswith(
        "2026-11-23T02:53:18.6"
    )
    assert all(len(o["sha256"]) == 64 for o in show["objects"])
    assert b"inc-42" in rawcap("snapshot", "list", env=buf).stdout
    # The snapshot yields exactly what the same window gave from the source.
    a, b = tmp_path / "direct.pcapng", tmp_path / "snap.pcapng"
    assert rawcap("pcap", "export", "--source", "local", *win, "-o", str(a), env=buf).returncode == 0
    assert rawcap("snapshot", "export", "inc-42", "-o", str(b), env=buf).returncode == 0
    assert tshark_rows(a) == tshark_rows(b) and len(tshark_rows(a)) == show["nodes"]["node-a"]["packets"] * 2
    assert rawcap("snapshot", "verify", "inc-42", env=buf).returncode == 0
    obj = tmp_path / "snaps" / "inc-42" / show["objects"][-1]["path"]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.chmod(0o644)
    obj.write_bytes(bytes(data))
    bad = rawcap("snapshot", "verify", "inc-42", env=buf)
    assert bad.returncode == 2 and show["objects"][-1]["path"].encode() in bad.stderr
    assert rawcap("snapshot", "delete", "inc-42", env=buf).returncode == 2
    assert rawcap("snapshot", "delete", "inc-42", "--force", env=buf).returncode == 0
    assert b"unknown snapshot id" in rawcap("snapshot", "show", "inc-42", env=buf).stderr


def test_progress_bar_only_on_a_terminal(buf: dict[str, str], tmp_path: Path) -> None:
    import os
    import pty

    from .helpers import RAWCAP

    out = tmp_path / "a.pcapng"
    argv = [*RAWCAP, "pcap", "export", "--source", "local", "--from", FROM, "-o", str(out)]
    master, slave = pty.openpty()
    try:
        env = {**os.environ, **buf}
        p = subprocess.run(argv, stderr=slave, stdout=subprocess.DEVNULL, env=env, timeout=120)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert p.returncode == 0 and b"exporting" in seen and b"wrote 106 packets" in seen
    piped = rawcap("pcap", "export", "--source", "local", "--from", FROM, "-o", str(out), env=buf)
    assert piped.returncode == 0 and b"exporting" not in piped.stderr
    assert len(piped.stderr.splitlines()) == 1  # the summary only
