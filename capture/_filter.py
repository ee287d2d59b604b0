"""The in-kernel capture filter: an eBPF socket filter (bcc) driven by maps.

Packets that are not wanted must never reach the ring: copying them there and discarding
them in Python costs the CPU the agent exists to save. The program (``_filter.c``) keeps
TCP/UDP only and consults allow/deny maps that :meth:`KernelFilter.apply` rewrites while the
ring stays open, so a :class:`schemas.control.CaptureFilter` takes effect within a packet.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import ipaddress
import logging
import os
import threading
from pathlib import Path
from typing import Any

from schemas.control import CaptureFilter
from schemas.errors import ConfigError, RawcapError

__all__ = ("FilterUnavailable", "KernelFilter", "load_bcc")

log = logging.getLogger("rawcap.capture")

F_ALLOW_IPS, F_ALLOW_PORTS, F_TCP, F_UDP, F_IFACES = 1, 2, 4, 8, 16
#: Counter slots in the ``counters`` map (see ``_filter.c``).
C_SEEN, C_ACCEPTED, C_REJECTED, C_OTHER = 0, 1, 2, 3


class FilterUnavailable(RawcapError):
    """bcc, kernel headers or BPF privileges are missing: the filter cannot be loaded."""


def load_bcc() -> Any:
    """Import bcc, or say in one line what to install (probed at start, not per packet)."""
    try:
        return importlib.import_module("bcc")
    except ImportError:
        raise FilterUnavailable(
            "bcc is not importable: install python3-bpfcc and link "
            "/usr/lib/python3/dist-packages/bcc into the virtualenv"
        ) from None


def _check_headers() -> None:
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(os.path.join(build, "include")):
        raise FilterUnavailable(
            f"kernel headers not found at {build}: install linux-headers for this kernel "
            f"and point {build} (and .../source) at them"
        )


CAP_NET_RAW, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 13, 21, 38, 39


def effective_caps() -> int:
    """Bit mask of this process's effective capabilities (``CapEff`` in /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_caps(what: str, *caps: int) -> None:
    eff = effective_caps()
    if eff & (1 << CAP_SYS_ADMIN):
        return
    names = {CAP_NET_RAW: "CAP_NET_RAW", CAP_BPF: "CAP_BPF", CAP_PERFMON: "CAP_PERFMON"}
    missing = [names[c] for c in caps if not eff & (1 << c)]
    if missing:
        raise FilterUnavailable(f"{what} needs {' and '.join(missing)} (or root); "
                                "see docs/capture.md, Capabilities")


class _Quiet:
    """Silence clang's chatter on fd 2 while bcc compiles (it would end up in user logs)."""

    def __enter__(self) -> None:
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)


def _lpm_key(map_: Any, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    key = map_.Key()
    if net.version == 4:
        addr = b"\0" * 10 + b"\xff\xff" + net.network_address.packed
        key.prefixlen = 96 + net.prefixlen
    else:
        addr = net.network_address.packed
        key.prefixlen = net.prefixlen
    ctypes.memmove(ctypes.addressof(key.addr), addr, 16)
    return key


def _networks(values: tuple[str, ...], what: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"capture filter: {what} entry {v!r} is not an IP address or CIDR") from None
    return out


class KernelFilter:
    """Compiled program plus its maps. ``fd`` is attached to the ring socket by the caller."""

    def __init__(self, snaplen: int = 0) -> None:
        bcc = load_bcc()
        require_caps("loading the eBPF capture filter", CAP_BPF)
        _check_headers()
        text = Path(__file__).with_name("_filter.c").read_bytes()
        try:
            with _Quiet():
                self._bpf = bcc.BPF(text=text, cflags=["-w"])
                self._fn = self._bpf.load_func(b"rawcap_filter", bcc.BPF.SOCKET_FILTER)
        except PermissionError:
            raise FilterUnavailable(
                "not allowed to load eBPF programs: the agent needs CAP_BPF (and CAP_PERFMON, "
                "CAP_NET_ADMIN for socket filters) or root"
            ) from None
        except Exception as exc:  # bcc raises plain Exception on compile/load failures
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "Operation not permitted" in msg or "EPERM" in msg:
                raise FilterUnavailable(
                    "not allowed to load eBPF programs: the agent needs CAP_BPF and CAP_PERFMON "
                    "(or root)"
                ) from None
            raise FilterUnavailable(f"cannot load the capture filter: {msg}") from None
        self._lock = threading.Lock()
        self.snaplen = snaplen
        self.current = CaptureFilter()
        self._ifaces: set[int] | None = None
        self.apply(CaptureFilter())

    @property
    def fd(self) -> int:
        return int(self._fn.fd)

    def _write_cfg(self, flags: int) -> None:
        cfg = self._bpf[b"cfg"]
        leaf = cfg.Leaf()
        leaf.snaplen = self.snaplen
        leaf.flags = flags
        cfg[ctypes.c_int(0)] = leaf

    def _flags(self) -> int:
        f = self.current
        protos = {p.lower() for p in f.protocols} or {"tcp", "udp"}
        flags = (F_TCP if "tcp" in protos else 0) | (F_UDP if "udp" in protos else 0)
        if f.allow_ips:
            flags |= F_ALLOW_IPS
        if f.allow_ports:
            flags |= F_ALLOW_PORTS
        if self._ifaces is not None:
            flags |= F_IFACES
        return flags

    def apply(self, f: CaptureFilter) -> None:
        """Rewrite the maps for ``f``. Validates everything before touching the kernel.

        Order matters for a filter that narrows: set-members are written before the flag
        that enables them, and removed after the flag is cleared, so that no packet sees a
        half-written filter that would let everything (or nothing) through.
        """
        allow_ips = _networks(f.allow_ips, "allow_ips")
        deny_ips = _networks(f.deny_ips, "deny_ips")
        for p in (*f.allow_ports, *f.deny_ports):
            if not 0 <= int(p) <= 65535:
                raise ConfigError(f"capture filter: port {p} is out of range 0-65535")
        for proto in f.protocols:
            if proto.lower() not in ("tcp", "udp"):
                raise ConfigError(f"capture filter: protocol {proto!r} is not tcp or udp")
        with self._lock:
            b = self._bpf
            self._sync_set(b[b"deny_ip"], [_lpm_key(b[b"deny_ip"], n) for n in deny_ips])
            self._sync_set(b[b"deny_port"], [b[b"deny_port"].Key(int(p)) for p in f.deny_ports])
            self._sync_set(b[b"allow_ip"], [_lpm_key(b[b"allow_ip"], n) for n in allow_ips])
            self._sync_set(b[b"allow_port"], [b[b"allow_port"].Key(int(p)) for p in f.allow_ports])
            self.current = f
            self._write_cfg(self._flags())
        log.info("capture filter applied", extra={"filter_version": f.version,
                                                   "allow_ips": len(allow_ips),
                                                   "deny_ips": len(deny_ips),
                                                   "allow_ports": len(f.allow_ports),
                                                   "deny_ports": len(f.deny_ports)})

    def set_ifaces(self, ifindexes: set[int] | None) -> None:
        """Restrict capture to these interfaces (``None``: whatever the socket is bound to)."""
        with self._lock:
            m = self._bpf[b"ifaces"]
            if ifindexes is not None:
                self._sync_set(m, [m.Key(i) for i in ifindexes])
            self._ifaces = set(ifindexes) if ifindexes is not None else None
            self._write_cfg(self._flags())

    @staticmethod
    def _sync_set(map_: Any, keys: list[Any]) -> None:
        wanted = {bytes(k): k for k in keys}
        one = map_.Leaf(1)
        for k in keys:
            map_[k] = one
        for k in list(map_.keys()):
            if bytes(k) not in wanted:
                with contextlib.suppress(KeyError):
                    del map_[k]

    def counters(self) -> list[int]:
        """Per-slot totals over CPUs: seen TCP/UDP, accepted, rejected, other protocols."""
        m = self._bpf[b"counters"]
        return [int(sum(m[ctypes.c_int(i)])) for i in range(4)]

    def close(self) -> None:
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
            self._bpf.cleanup()
