"""Filters: libpcap-compiled expressions must select exactly what tcpdump selects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rawcap.filters import PacketFilter
from rawcap.pcap import read_capture
from schemas.errors import ConfigError

DATA = Path(__file__).parent.parent / "data"


def _recs() -> list:
    with open(DATA / "small.pcap", "rb") as fh:
        return [r for recs in read_capture(fh) for r in recs]


def _tcpdump_count(expr: str) -> int:
    out = subprocess.run(
        ["tcpdump", "-nr", str(DATA / "small.pcap"), expr], capture_output=True, text=True, check=True
    ).stdout
    return len(out.splitlines())


@pytest.mark.parametrize(
    "expr",
    [
        "tcp",
        "udp",
        "tcp port 8080",
        "ip6 and udp",
        "tcp[tcpflags] & tcp-syn != 0",
        "host 10.231.163.1 and not icmp",
        "ip[6:2] & 0x1fff != 0 or ip6[6] == 44",
        "greater 1000",
    ],
)
def test_expression_matches_tcpdump(expr: str) -> None:
    f = PacketFilter.build(expression=expr)
    got = sum(1 for r in _recs() if f.match(r.data, r.origlen))
    assert got == _tcpdump_count(expr) > 0


def test_flags() -> None:
    recs = _recs()
    tcp = PacketFilter.build(proto="tcp")
    assert sum(tcp.match(r.data) for r in recs) == _tcpdump_count("tcp")
    port = PacketFilter.build(ports=["8080"], proto="tcp")
    assert sum(port.match(r.data) for r in recs) == _tcpdump_count("tcp port 8080")
    host = PacketFilter.build(hosts=["fd31:163::1"], proto="udp")
    # Unlike tcpdump's "udp", --proto udp keeps the later fragments of a UDP datagram too.
    assert (
        sum(host.match(r.data) for r in recs)
        == _tcpdump_count("host fd31:163::1 and (udp or (ip6[6] == 44 and ip6[40] == 17))")
        == 5
    )
    both = PacketFilter.build(hosts=["10.231.163.2"], expression="tcp[tcpflags] & tcp-fin != 0")
    assert sum(both.match(r.data) for r in recs) == _tcpdump_count(
        "host 10.231.163.2 and tcp[tcpflags] & tcp-fin != 0"
    )
    assert PacketFilter.build().empty


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expression": "tcp prot 80"}, "filter expression 'tcp prot 80' is invalid"),
        ({"hosts": ["10.1.2"]}, "--host '10.1.2' is not an IPv4 or IPv6 address"),
        ({"ports": ["http"]}, "--port 'http' is not a port number"),
        ({"ports": ["70000"]}, "out of range"),
        ({"proto": "icmp"}, "--proto 'icmp' is invalid"),
        ({"pods": ["web-("]}, "--pod 'web-(' is not a valid regular expression"),
    ],
)
def test_bad_filters_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PacketFilter.build(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
