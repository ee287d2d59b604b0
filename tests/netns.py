"""Real network namespaces joined by a veth pair, for tests that need real interfaces.

Tests that capture, filter or replay packets need a kernel path that carries real traffic
and nothing else. This helper creates two fresh network namespaces joined by a veth pair,
each end with a private address (10.231.x.y, fd31:x::y), and removes everything on exit,
even when a test fails. Nothing leaves the two namespaces.

API::

    from tests.netns import VethPair

    with VethPair("rc3") as net:            # namespaces rc3-a / rc3-b, subnet 10.231.<n>.0/24
        net.a.name, net.a.iface, net.a.ip   # "rc3-a", "rc3a", "10.231.<n>.1"
        net.b.ip6                           # "fd31:<n>::2"
        net.a.run("ping", "-c1", net.b.ip)  # CompletedProcess (check=True, text output)
        p = net.b.popen(["tcpdump", ...])   # subprocess.Popen inside namespace b
        net.a.cmd(["rawcap", ...])          # ["ip", "netns", "exec", "rc3-a", "rawcap", ...]
        with net.a.entered():               # this *thread* runs inside namespace a; sockets
            s = socket.socket(...)          # created here belong to it, even after leaving
        net.a.ifindex                       # ifindex of the veth end inside its namespace

    # pytest fixture style: see ``veth_pair`` below (``from tests.netns import veth_pair``
    # in a conftest makes it available).

``VethPair(prefix, subnet=None, mtu=1500, vlan=None)``: ``subnet`` is the third octet of
10.231.x.0/24 (default: derived from the prefix so that parallel tests differ). With
``vlan=ID`` each end also gets an 802.1Q sub-interface ``<iface>.<ID>`` addressed
10.232.<n>.1/2 (``net.a.vlan_ip``), for VLAN-tagged traffic on the same veth; this needs
the kernel's 8021q support (the CI machine's kernel has none: there, send tagged frames
with a raw packet socket instead, as ``tests/capture/traffic.py vlan`` does).
Offloads (GRO/TSO/GSO) are switched off on both ends so that every packet on the wire is
one packet in a capture, as it would be on a physical NIC.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

__all__ = ("NetNs", "VethPair", "veth_pair")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class NetNs:
    """One namespace and its end of the veth pair."""

    name: str
    iface: str
    ip: str
    ip6: str
    vlan_iface: str | None = None
    vlan_ip: str | None = None

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(argv), check=check, capture_output=True, text=True,
                              timeout=timeout, **kw)  # type: ignore[call-overload]

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(argv), **kw)  # type: ignore[call-overload]

    @property
    def ifindex(self) -> int:
        out = self.run("cat", f"/sys/class/net/{self.iface}/ifindex").stdout
        return int(out.strip())

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the calling thread inside this namespace; restores the old one on exit.

        Sockets created inside stay in this namespace for their whole life.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name} failed")
            try:
                yield
            finally:
                if _libc.setns(own, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")
        finally:
            os.close(target)
            os.close(own)


class VethPair:
    """Two namespaces ``<prefix>-a`` and ``<prefix>-b`` joined by veth ``<prefix>a``/``<prefix>b``."""

    def __init__(self, prefix: str, subnet: int | None = None, *, mtu: int = 1500,
                 vlan: int | None = None) -> None:
        # RAWCAP_TEST_NETNS_TAG keeps two pytest sessions on one machine off each other's names.
        prefix = os.environ.get("RAWCAP_TEST_NETNS_TAG", "") + prefix
        if len(prefix) > 12:
            raise ValueError("prefix must be at most 12 characters (interface names are 15)")
        n = subnet if subnet is not None else 16 + zlib.crc32(prefix.encode()) % 200
        self.prefix, self.subnet, self.mtu, self.vlan = prefix, n, mtu, vlan
        self.a = NetNs(f"{prefix}-a", f"{prefix}a", f"10.231.{n}.1", f"fd31:{n}::1")
        self.b = NetNs(f"{prefix}-b", f"{prefix}b", f"10.231.{n}.2", f"fd31:{n}::2")
        if vlan is not None:
            for end, host in ((self.a, 1), (self.b, 2)):
                end.vlan_iface = f"{end.iface}.{vlan}"
                end.vlan_ip = f"10.232.{n}.{host}"

    def __enter__(self) -> VethPair:
        self.close()  # leftovers from a crashed run
        try:
            for end in (self.a, self.b):
                _ip("netns", "add", end.name)
            _ip("link", "add", self.a.iface, "mtu", str(self.mtu), "netns", self.a.name,
                "type", "veth", "peer", "name", self.b.iface, "mtu", str(self.mtu),
                "netns", self.b.name)
            for end in (self.a, self.b):
                end.run("ip", "link", "set", "lo", "up")
                end.run("ip", "addr", "add", f"{end.ip}/24", "dev", end.iface)
                end.run("ip", "-6", "addr", "add", f"{end.ip6}/64", "dev", end.iface, "nodad")
                end.run("ip", "link", "set", end.iface, "up")
                end.run("ethtool", "-K", end.iface, "gro", "off", "tso", "off", "gso", "off",
                        "tx", "off", "rx", "off", check=False)
                if self.vlan is not None:
                    assert end.vlan_iface and end.vlan_ip
                    end.run("ip", "link", "add", "link", end.iface, "name", end.vlan_iface,
                            "type", "vlan", "id", str(self.vlan))
                    end.run("ip", "addr", "add", f"{end.vlan_ip}/24", "dev", end.vlan_iface)
                    end.run("ip", "link", "set", end.vlan_iface, "up")
            # Static neighbours: no ARP/ND chatter in captures, no first-packet delay.
            mac_a = self.a.run("cat", f"/sys/class/net/{self.a.iface}/address").stdout.strip()
            mac_b = self.b.run("cat", f"/sys/class/net/{self.b.iface}/address").stdout.strip()
            for end, peer, mac in ((self.a, self.b, mac_b), (self.b, self.a, mac_a)):
                end.run("ip", "neigh", "replace", peer.ip, "lladdr", mac, "dev", end.iface)
                end.run("ip", "-6", "neigh", "replace", peer.ip6, "lladdr", mac, "dev", end.iface)
                if self.vlan is not None:
                    assert peer.vlan_ip and end.vlan_iface
                    end.run("ip", "neigh", "replace", peer.vlan_ip, "lladdr", mac,
                            "dev", end.vlan_iface)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for end in (self.a, self.b):
            # Kill whatever a test left running in the namespace, then delete it.
            pids = subprocess.run(["ip", "netns", "pids", end.name], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", end.name], capture_output=True)


@pytest.fixture
def veth_pair(request: pytest.FixtureRequest) -> Iterator[VethPair]:
    """A fresh :class:`VethPair` named after the test (use in a conftest by importing it)."""
    prefix = "t" + format(zlib.crc32(request.node.nodeid.encode()) & 0xFFFFFF, "x")
    with VethPair(prefix[:10]) as pair:
        yield pair
