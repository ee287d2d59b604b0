"""The rawcap image really runs: built by compose/image/build.sh (no Docker, no registry),
unpacked from its OCI layout and started by runc with a read-only root filesystem.

- every command's entry point, as the image's non-root user with no capability at all;
- the consumers (pcap import, consume, pcap export) against the test Kafka, non-root;
- the capture agent as a DaemonSet pod runs it: host network, uid 0 with only NET_RAW, BPF
  and PERFMON, the node's kernel headers mounted from the host (/lib/modules, /usr/src);
  what it ships to Kafka equals tcpdump on the same interface; without the headers mount it
  stops with one line that names them.

runc rather than podman: no daemon, no image store to copy 450 MB into, and it is the
runtime that containerd (and so a kubelet) runs; the spec comes from the image config
through umoci, as containerd derives a pod's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rawcap.packet import parse_l4
from rawcap.timeparse import format_ns
from tests.forensics.helpers import rawcap, records, wireshark_warnings

from .conftest import REPO, image_cache
from .hostnet import BridgedPods
from .runc import RawcapImage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

AGENT_CAPS = ("NET_RAW", "BPF", "PERFMON")  # docs/capture.md; the chart's DaemonSet adds these
HEADERS = (("/lib/modules", "/lib/modules", True), ("/usr/src", "/usr/src", True))
PY = "/opt/rawcap/bin/python3"


def test_every_command_starts_as_the_non_root_user(image: RawcapImage) -> None:
    assert image.spec["process"]["user"] == {"uid": 10001, "gid": 10001}
    r = image.container(["--help"]).run()
    assert r.returncode == 0, r.stderr
    for command in ("capture", "consume", "archive", "dissect", "enrich", "k8s-watch", "pcap"):
        assert f"\n    {command} " in r.stdout, command
    probe = image.container(["-c", "import os, bcc, rawcap.pcap._fastpcap, zstandard\n"
                                   "print(os.getuid(), os.getgid(), zstandard.backend)\n"
                                   "import importlib.util as u; print(u.find_spec('pip'))"],
                            command=[PY]).run()
    assert probe.returncode == 0, probe.stderr
    # uid/gid 10001, the C extensions load (bcc over libbcc, the pcapng fast path, zstd's C
    # backend), and no pip is left in the image
    assert probe.stdout.split("\n")[:2] == ["10001 10001 cext", "None"]


def test_image_is_small_and_layered(image_tag: str) -> None:
    r = subprocess.run([sys.executable, str(REPO / "compose/image/sizes.py"), str(image_cache() / "oci"),
                        image_tag, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    debian, deps, own = rep["layers"]
    assert (debian["title"], deps["title"], own["title"]) == ("Debian layer", "dependencies layer",
                                                            "rawcap layer")
    # measured 2026-12-03: 204.2 MB compressed, 593.3 MB on disk, of which bcc + LLVM 236 MB
    # and Polars 147 MB (docs/image.md)
    assert rep["compressed"] < 225e6 and rep["uncompressed"] < 640e6, rep
    assert own["compressed"] < 3e6          # a source change ships ~1 MB, not the image
    assert set(debian["parts"]) >= {"Debian minbase (+ apt)", "Python 3.11 (Debian)", "bcc + LLVM/clang 14"}
    assert debian["parts"]["Debian minbase (+ apt)"] < 100e6  # no docs, man pages, locales, perl
    # debug symbols stripped from the wheels' shared objects (zstandard's were 23 MB)
    assert deps["parts"]["zstandard"] < 5e6


def _kafka_env(stack: Any) -> dict[str, str]:
    return {"RAWCAP_BOOTSTRAP": stack.bootstrap,
            "RAWCAP_KAFKA_CLIENT_ID": f"image-test-{uuid.uuid4().hex[:6]}"}


def test_consumers_run_non_root_against_kafka(image: RawcapImage, stack: Any, tmp_path: Path) -> None:
    node = f"img{uuid.uuid4().hex[:8]}"
    env = _kafka_env(stack)
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 10001, 10001)
    data = REPO / "tests" / "data"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return image.container(list(args), env=env, host_network=True,
                               binds=[(data, "/data", True), (out, "/var/lib/rawcap/out", False)]).run()

    # the import keeps the capture's own timestamps: the window is the pcap's
    pcap = records(data / "small.pcap")
    window = ["--from", format_ns(min(r.ts_ns for r in pcap))[:26] + "Z",
              "--to", format_ns(max(r.ts_ns for r in pcap) + 1000)[:26] + "Z"]
    imp = run("pcap", "import", "/data/small.pcap", "--node", node)
    assert imp.returncode == 0, imp.stderr
    inside = run("consume", "--node", node, *window, "--json")
    assert inside.returncode == 0, inside.stderr
    host = rawcap("consume", "--node", node, *window, "--json", env=env)
    assert host.returncode == 0, host.stderr.decode()
    lines = inside.stdout.splitlines()
    assert len(lines) >= 10 and lines == host.stdout.decode().splitlines()

    exp = run("pcap", "export", "--node", node, *window, "-o", "/var/lib/rawcap/out/x.pcapng")
    assert exp.returncode == 0, exp.stderr
    written = out / "x.pcapng"
    assert written.stat().st_uid == 10001
    assert wireshark_warnings(written) == []
    # pcap import keeps every packet (not only TCP/UDP): the export gives them all back
    assert [bytes(r.data) for r in records(written)] == [bytes(r.data) for r in pcap]


def _agent(image: RawcapImage, args: list[str], *, headers: bool = True, env: dict[str, str] | None = None,
           buffer: Path | None = None) -> Any:
    binds: list[tuple[str | Path, str, bool]] = [*(HEADERS if headers else ()),
                                                  ("/sys/kernel/tracing", "/sys/kernel/tracing", False)]
    if buffer is not None:
        binds.append((buffer, "/var/lib/rawcap/buffer", False))
    return image.container(["capture", *args], env=env, user=(0, 0), caps=AGENT_CAPS,
                           host_network=True, host_pid=True, host_cgroup=True, binds=binds,
                           writable=() if buffer is not None else ("/var/lib/rawcap",))


def test_capture_in_the_image_equals_tcpdump(image: RawcapImage, stack: Any, tmp_path: Path) -> None:
    node = f"img-{uuid.uuid4().hex[:8]}"
    env = {**_kafka_env(stack), "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.3s"}
    ref = tmp_path / "tcpdump.pcap"
    buffer = tmp_path / "buffer"
    buffer.mkdir()
    with BridgedPods("rcimg") as net:
        iface = net.host_iface("b")
        t_start = time.time_ns()
        cap = _agent(image, ["--iface", iface, "--node", node], env=env, buffer=buffer).start()
        td = subprocess.Popen(["tcpdump", "-i", iface, "-w", str(ref), "-U", "-s", "0",
                               "--time-stamp-precision", "nano", "-B", "16384"], stderr=subprocess.DEVNULL)
        srv = net.b.popen([sys.executable, "-m", "http.server", "8081", "--bind", "::"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cap.wait_for("capture running", timeout=120)
            cap.wait_for("shipper connected", timeout=60)
            time.sleep(1.5)  # tcpdump and the server are up
            for i in range(10):
                for host in (net.b.ip, f"[{net.b.ip6}]"):
                    net.a.run("curl", "-s", "-o", "/dev/null", f"http://{host}:8081/?i={i}", check=False)
            net.a.run(sys.executable, "-c",
                      "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                      f"[s.sendto(bytes([n%256])*n,('{net.b.ip}',5300)) for n in range(10,1400,37)]")
            time.sleep(1.5)
        finally:
            srv.terminate()
            srv.wait()
            td.send_signal(signal.SIGINT)
            td.wait(10)
            rc = cap.stop(signal.SIGTERM)
        assert rc == 0, cap.text
        assert " unshipped=0 " in cap.text, cap.text
        t_end = time.time_ns()
    # the FIFO buffer on the host path (a hostPath in the DaemonSet) holds the node's segments
    assert any((buffer / node).iterdir())
    want = [r for r in records(ref) if parse_l4(r.data) is not None]
    assert len(want) > 150
    out = tmp_path / "export.pcapng"
    p = rawcap("pcap", "export", "--node", node, "--from", format_ns(t_start)[:26] + "Z",
               "--to", format_ns(t_end)[:26] + "Z", "-o", str(out), env=env)
    assert p.returncode == 0, p.stderr.decode()
    got = records(out)
    assert {r.iface for r in got} == {f"{node}:{iface}"}
    # the same packets; compared as multisets: two AF_PACKET sockets on one veth may see two
    # packets crossing at the same instant (one on the transmit path, one received on another
    # CPU) in opposite orders, so neither tcpdump's order nor the agent's is the reference
    assert sorted((r.caplen, r.origlen, bytes(r.data)) for r in got) == sorted(
        (r.caplen, r.origlen, bytes(r.data)) for r in want)


def test_capture_without_the_headers_mount_is_one_line(image: RawcapImage) -> None:
    r = _agent(image, ["--iface", "lo", "--no-kafka", "--duration", "1"], headers=False).run()
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rawcap: error:") and "kernel headers" in last, r.stderr
    assert "Traceback" not in r.stderr
