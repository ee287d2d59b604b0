"""Two network namespaces on a bridge in the host's namespace: a node's pods on its bridge.

A capture agent in a DaemonSet pod shares the node's network namespace and captures the
node's side of the pods' veth pairs. This builds that shape for tests: namespaces
``<prefix>-a`` / ``<prefix>-b`` (the pods), each with ``eth0`` (10.233.<n>.1 / .2 and
fd33:<n>::1 / ::2) whose peer ``<prefix>ha`` / ``<prefix>hb`` sits in the host namespace on
the bridge ``<prefix>br``. The bridge and the host-side ends have no address and IPv6 off,
so the host routes nothing to or from them: traffic stays between the two namespaces.
Everything is removed on exit, even when a test fails.

    with BridgedPods("i") as net:
        net.host_iface("b")          # "<prefix>hb": capture here, from the host namespace
        net.a.run("curl", ...)       # tests.netns.NetNs of each namespace
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import zlib

from tests.netns import NetNs

__all__ = ("BridgedPods",)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60)


class BridgedPods:
    """Namespaces ``a`` and ``b`` joined through a host-namespace bridge."""

    def __init__(self, prefix: str) -> None:
        prefix = os.environ.get("RAWCAP_TEST_NETNS_TAG", "") + prefix
        if len(prefix) > 12:
            raise ValueError("prefix must be at most 12 characters (interface names are 15)")
        n = 16 + zlib.crc32(prefix.encode()) % 200
        self.prefix, self.bridge = prefix, f"{prefix}br"
        self.a = NetNs(f"{prefix}-a", "eth0", f"10.233.{n}.1", f"fd33:{n}::1")
        self.b = NetNs(f"{prefix}-b", "eth0", f"10.233.{n}.2", f"fd33:{n}::2")

    def host_iface(self, end: str) -> str:
        return f"{self.prefix}h{end}"

    def __enter__(self) -> BridgedPods:
        self.close()
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._no_ipv6(self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for key, ns in (("a", self.a), ("b", self.b)):
                host = self.host_iface(key)
                _run("ip", "netns", "add", ns.name)
                _run("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
                self._no_ipv6(host)
                _run("ip", "link", "set", host, "master", self.bridge)
                _run("ip", "link", "set", host, "up")
                if shutil.which("ethtool"):
                    _run("ethtool", "-K", host, "gro", "off", "tso", "off", "gso", "off", "tx", "off",
                         "rx", "off", check=False)
                ns.run("ip", "link", "set", "lo", "up")
                ns.run("ip", "addr", "add", f"{ns.ip}/24", "dev", "eth0")
                ns.run("ip", "-6", "addr", "add", f"{ns.ip6}/64", "dev", "eth0", "nodad")
                ns.run("ip", "link", "set", "eth0", "up")
                ns.run("ethtool", "-K", "eth0", "gro", "off", "tso", "off", "gso", "off", "tx", "off",
                       "rx", "off", check=False)
            # Static neighbours: no ARP/ND in the capture, no first-packet delay.
            mac = {k: ns.run("cat", "/sys/class/net/eth0/address").stdout.strip()
                   for k, ns in (("a", self.a), ("b", self.b))}
            for ns, peer, peer_mac in ((self.a, self.b, mac["b"]), (self.b, self.a, mac["a"])):
                ns.run("ip", "neigh", "replace", peer.ip, "lladdr", peer_mac, "dev", "eth0")
                ns.run("ip", "-6", "neigh", "replace", peer.ip6, "lladdr", peer_mac, "dev", "eth0")
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _no_ipv6(iface: str) -> None:
        with open(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "w") as fh:
            fh.write("1")

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ns in (self.a, self.b):
            for pid in _run("ip", "netns", "pids", ns.name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _run("ip", "netns", "del", ns.name, check=False)
        for iface in (self.host_iface("a"), self.host_iface("b"), self.bridge):
            _run("ip", "link", "del", iface, check=False)
