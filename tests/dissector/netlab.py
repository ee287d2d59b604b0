"""Two network namespaces joined by a veth pair, servers in one, clients in the other.

Everything started here is tracked and stopped by pid; the namespaces are deleted at the
end. Addresses are private (10.231.x.y) and exist only inside these namespaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PY = sys.executable


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class NetLab:
    def __init__(self, tag: str) -> None:
        n = os.getpid() % 200 + 20
        self.ns_c = f"rcd{tag}{os.getpid()}c"
        self.ns_s = f"rcd{tag}{os.getpid()}s"
        self.client_ip = f"10.231.{n}.1"
        self.server_ip = f"10.231.{n}.2"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> NetLab:
        sh("ip", "netns", "add", self.ns_c)
        sh("ip", "netns", "add", self.ns_s)
        vc, vs = f"v{os.getpid()}c", f"v{os.getpid()}s"
        sh("ip", "link", "add", vc, "type", "veth", "peer", "name", vs)
        sh("ip", "link", "set", vc, "netns", self.ns_c)
        sh("ip", "link", "set", vs, "netns", self.ns_s)
        for ns, dev, ip in ((self.ns_c, vc, self.client_ip), (self.ns_s, vs, self.server_ip)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.dev_c = vc
        return self

    def start(self, ns: str, *cmd: str, ready: bytes | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.procs.append(p)
        if ready is not None:
            stream = p.stderr if ready == b"listening" else p.stdout
            assert stream is not None
            deadline = time.monotonic() + 20
            line = b""
            while ready not in line:
                line = stream.readline()
                if not line and p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                    raise RuntimeError(f"{cmd[0]} exited: {err}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd} not ready")
        return p

    def run(self, ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True,
                              timeout=timeout, check=True)

    def capture(self, path: Path) -> subprocess.Popen[bytes]:
        return self.start(self.ns_c, "tcpdump", "-i", self.dev_c, "-s", "0", "-U", "-w",
                          str(path), ready=b"listening")

    @staticmethod
    def stop(p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            self.stop(p)
            for s in (p.stdout, p.stderr):
                if s is not None:
                    s.close()
        subprocess.run(["ip", "netns", "del", self.ns_c], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns_s], capture_output=True)
