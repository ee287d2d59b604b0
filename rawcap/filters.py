"""Packet filters for the forensics commands: ``--host``, ``--port``, ``--proto`` and a
tcpdump-style expression.

The expression is compiled by libpcap itself (``pcap_open_dead`` + ``pcap_compile`` through
ctypes) and run with libpcap's ``bpf_filter`` interpreter, so everything ``tcpdump`` accepts
for an Ethernet capture works here, with the same meaning (including its quirk that
``host``/``port`` do not look inside VLAN tags unless the expression says ``vlan and ...``).
``--host``/``--port``/``--proto`` are evaluated in Python on :func:`rawcap.packet.parse_l4`,
which does see through VLAN tags and IPv6 extension headers; several values of one flag are
alternatives (OR), different flags must all hold (AND), and the expression is ANDed too.

``--namespace NS`` / ``--pod REGEX`` select by Kubernetes workload: the filter records them
(regexes are checked at build time) and the command binds it to a
:class:`rawcap.workloads.Workloads` read from ``rawcap.k8s`` (:meth:`PacketFilter.bind`);
each packet is then resolved **at its own timestamp** (pod IPs are reused), either end
matching (rules in :mod:`rawcap.workloads`). The workload test runs last, after the cheap
checks; a filter without ``--namespace``/``--pod`` never touches it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.errors import ConfigError

from .packet import IPPROTO_TCP, IPPROTO_UDP, parse_l4

if TYPE_CHECKING:
    from .workloads import WorkloadFilter, Workloads

__all__ = ("BpfProgram", "PacketFilter", "add_filter_arguments", "both", "filter_from_args")

_LINKTYPE_ETHERNET = 1


class _BpfProgramStruct(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p))


_lib: Any = None


def _libpcap() -> Any:
    global _lib
    if _lib is None:
        # Imported here: ctypes.util (subprocess, tempfile, shutil) is ~8 ms of start-up
        # that a command without a filter expression does not need.
        from ctypes.util import find_library

        path = find_library("pcap") or "libpcap.so.0.8"
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise ConfigError(f"filter expressions need libpcap ({path}): {exc}") from None
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = (
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgramStruct),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        )
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
        lib.pcap_close.argtypes = (ctypes.c_void_p,)
        lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgramStruct),)
        lib.bpf_filter.restype = ctypes.c_uint
        lib.bpf_filter.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint)
        _lib = lib
    return _lib


class BpfProgram:
    """A tcpdump expression compiled by libpcap for Ethernet frames."""

    def __init__(self, expression: str, *, linktype: int = _LINKTYPE_ETHERNET, snaplen: int = 262144) -> None:
        lib = _libpcap()
        self.expression = expression
        self._prog = _BpfProgramStruct()
        handle = lib.pcap_open_dead(linktype, snaplen)
        if not handle:
            raise ConfigError("libpcap could not open a dead handle to compile the filter")
        try:
            # PCAP_NETMASK_UNKNOWN (0xffffffff): "ip broadcast" is refused instead of guessed.
            if lib.pcap_compile(handle, ctypes.byref(self._prog), expression.encode(), 1, 0xFFFFFFFF) != 0:
                err = (lib.pcap_geterr(handle) or b"syntax error").decode(errors="replace")
                raise ConfigError(f"filter expression {expression!r} is invalid: {err}")
        finally:
            lib.pcap_close(handle)
        self._insns = self._prog.bf_insns
        self._run = lib.bpf_filter

    def __call__(self, data: bytes, origlen: int | None = None) -> bool:
        return self._run(self._insns, data, origlen or len(data), len(data)) != 0

    def __del__(self) -> None:
        if _lib is not None and getattr(self, "_prog", None) is not None and self._prog.bf_insns:
            _lib.pcap_freecode(ctypes.byref(self._prog))


def _parse_host(text: str) -> bytes:
    try:
        return ipaddress.ip_address(text.strip("[]")).packed
    except ValueError:
        raise ConfigError(f"--host {text!r} is not an IPv4 or IPv6 address") from None


def _parse_port(text: str | int) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"--port {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is out of range (0-65535)")
    return port


@dataclass(frozen=True, slots=True)
class PacketFilter:
    hosts: frozenset[bytes] = frozenset()
    ports: frozenset[int] = frozenset()
    proto: int = 0  # 0 any, 6 tcp, 17 udp
    bpf: BpfProgram | None = None
    namespaces: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()  # regexes (validated by build)
    workloads: WorkloadFilter | None = None  # set by bind()

    @classmethod
    def build(
        cls,
        *,
        hosts: Sequence[str] = (),
        ports: Sequence[str | int] = (),
        proto: str | None = None,
        expression: str | None = None,
        namespaces: Sequence[str] = (),
        pods: Sequence[str] = (),
    ) -> PacketFilter:
        for text in pods:
            try:
                re.compile(text)
            except re.error as exc:
                raise ConfigError(f"--pod {text!r} is not a valid regular expression: {exc}") from None
        if proto not in (None, "", "tcp", "udp"):
            raise ConfigError(f"--proto {proto!r} is invalid: expected tcp or udp")
        return cls(
            hosts=frozenset(_parse_host(h) for h in hosts),
            ports=frozenset(_parse_port(p) for p in ports),
            proto={"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}.get(proto or "", 0),
            bpf=BpfProgram(expression) if expression and expression.strip() else None,
            namespaces=tuple(sorted({n for n in namespaces if n})),
            pods=tuple(dict.fromkeys(p for p in pods if p)),
        )

    @property
    def empty(self) -> bool:
        return not (self.hosts or self.ports or self.proto or self.bpf or self.namespaces or self.pods)

    @property
    def needs_workloads(self) -> bool:
        """True when ``--namespace``/``--pod`` were given (bind it before matching)."""
        return bool(self.namespaces or self.pods)

    def bind(self, workloads: Workloads) -> PacketFilter:
        """This filter with its ``--namespace``/``--pod`` part resolved through ``workloads``
        (``rawcap.k8s`` as read by :meth:`rawcap.workloads.Workloads.load`)."""
        if not self.needs_workloads:
            return self
        from .workloads import WorkloadFilter

        return dataclasses.replace(
            self, workloads=WorkloadFilter(workloads, namespaces=self.namespaces, pods=self.pods)
        )

    def describe(self) -> dict[str, Any]:
        """What the filter is, for manifests and logs."""
        return {
            "hosts": sorted(str(ipaddress.ip_address(h)) for h in self.hosts),
            "ports": sorted(self.ports),
            "proto": {6: "tcp", 17: "udp"}.get(self.proto, ""),
            "expression": self.bpf.expression if self.bpf else "",
            "namespaces": list(self.namespaces),
            "pods": list(self.pods),
        }

    def match(self, data: bytes | memoryview, origlen: int | None = None, ts_ns: int = 0) -> bool:
        """One frame; ``ts_ns`` (the packet's time) is what ``--namespace``/``--pod`` resolve at."""
        if self.hosts or self.ports or self.proto:
            l4 = parse_l4(data)
            if l4 is None:
                return False
            if self.proto and l4.proto != self.proto:
                return False
            if self.hosts and l4.src not in self.hosts and l4.dst not in self.hosts:
                return False
            if self.ports and l4.sport not in self.ports and l4.dport not in self.ports:
                return False
        if self.bpf is not None and not self.bpf(data if isinstance(data, bytes) else bytes(data), origlen):
            return False
        if self.workloads is not None:
            return self.workloads.match(data, origlen, ts_ns)
        if self.namespaces or self.pods:
            raise RuntimeError("PacketFilter with --namespace/--pod used before bind(workloads)")
        return True


def add_filter_arguments(parser: Any) -> None:
    """The FILTER options every forensics command takes."""
    g = parser.add_argument_group("filters (flags AND together; repeat a flag for OR)")
    g.add_argument("--host", action="append", default=[], metavar="IP", help="either address equals IP")
    g.add_argument("--port", action="append", default=[], metavar="PORT", help="either port equals PORT")
    g.add_argument("--proto", choices=("tcp", "udp"), help="transport protocol")
    g.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="either end's pod or service is in namespace NS at the packet's time (rawcap.k8s)",
    )
    g.add_argument(
        "--pod",
        action="append",
        default=[],
        metavar="REGEX",
        help="either end's pod name matches REGEX (re.search) at the packet's time (rawcap.k8s)",
    )
    g.add_argument(
        "expression",
        nargs="*",
        metavar="EXPR",
        help="tcpdump filter expression, e.g. 'tcp port 80 and host 10.0.0.1'",
    )


def filter_from_args(args: Any) -> PacketFilter:
    return PacketFilter.build(
        hosts=args.host,
        ports=args.port,
        proto=args.proto,
        expression=" ".join(getattr(args, "expression", []) or []),
        namespaces=args.namespace,
        pods=args.pod,
    )


class _Both:
    """Two filters that must both match (a snapshot's stored filter AND the command's)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b
        self.empty = a.empty and b.empty

    def match(self, data: bytes | memoryview, origlen: int | None = None, ts_ns: int = 0) -> bool:
        return bool(self.a.match(data, origlen, ts_ns) and self.b.match(data, origlen, ts_ns))


def both(a: Any, b: Any) -> Any:
    """``a`` AND ``b``; an empty side costs nothing."""
    if a.empty:
        return b
    return a if b.empty else _Both(a, b)
