"""rawcap.packet against tshark's dissection of a real tcpdump capture, plus hand-made frames
for VLAN, IP options, extension headers and every truncation point."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from rawcap.packet import format_addr, format_flags, format_l4, parse_l4
from rawcap.pcap import read_capture

DATA = Path(__file__).parent.parent / "data"


def _records(name: str) -> list:
    with open(DATA / name, "rb") as fh:
        return [r for recs in read_capture(fh) for r in recs]


def _tshark_fields(name: str) -> list[list[str]]:
    fields = [
        "ip.src",
        "ipv6.src",
        "ip.dst",
        "ipv6.dst",
        "tcp.srcport",
        "udp.srcport",
        "tcp.dstport",
        "udp.dstport",
        "tcp.flags",
        "tcp.len",
        "ip.frag_offset",
        "ipv6.fraghdr.offset",
        "icmp.type",
        "icmpv6.type",
    ]
    argv = [
        "tshark",
        "-r",
        str(DATA / name),
        "-o",
        "ip.defragment:FALSE",
        "-o",
        "ipv6.defragment:FALSE",
        "-T",
        "fields",
        "-E",
        "occurrence=f",
    ]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def test_matches_tshark_on_real_capture() -> None:
    recs = _records("small.pcap")
    rows = _tshark_fields("small.pcap")
    assert len(recs) == len(rows) == 53
    seen_tcp = seen_udp = seen_frag = 0
    for r, row in zip(recs, rows, strict=True):
        src4, src6, dst4, dst6, tsp, usp, tdp, udp_, flags, tlen, frag4, frag6, icmp4, icmp6 = row
        l4 = parse_l4(r.data)
        is_frag = (frag4 and frag4 != "0") or (frag6 and frag6 != "0")
        if icmp4 or icmp6:
            assert l4 is None  # ICMP (tshark also shows the quoted inner header's ports)
            continue
        if tsp:
            assert l4 is not None and l4.proto == 6
            assert (l4.sport, l4.dport) == (int(tsp), int(tdp))
            assert l4.flags == int(flags, 16)
            assert l4.payload_len == int(tlen)
            assert len(r.data[l4.payload_off : l4.payload_off + l4.payload_len]) == int(tlen)
            seen_tcp += 1
        elif usp and not is_frag:
            assert l4 is not None and l4.proto == 17 and not l4.fragment
            assert (l4.sport, l4.dport) == (int(usp), int(udp_))
            seen_udp += 1
        elif is_frag:
            assert l4 is not None and l4.fragment and l4.sport == 0 and l4.dport == 0
            seen_frag += 1
        else:
            assert l4 is None  # ICMP / ICMPv6 / ND
            continue
        assert format_addr(l4.src) == (src4 or src6)
        assert format_addr(l4.dst) == (dst4 or dst6)
    assert seen_tcp >= 20 and seen_udp >= 4 and seen_frag >= 3


def _eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid, 5) for tpid in vlans)
    return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", ethertype) + payload


def _ipv4(proto: int, l4: bytes, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = (20 + len(options)) // 4
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            ihl * 4 + len(l4),
            1,
            frag,
            64,
            proto,
            0,
            bytes([10, 231, 0, 1]),
            bytes([10, 231, 0, 2]),
        )
        + options
        + l4
    )


def _tcp(payload: bytes = b"", flags: int = 0x18, opts: bytes = b"") -> bytes:
    return (
        struct.pack("!HHIIBBHHH", 40000, 443, 7, 9, ((20 + len(opts)) // 4) << 4, flags, 1000, 0, 0)
        + opts
        + payload
    )


def _ipv6(nxt: int, rest: bytes, plen: int | None = None) -> bytes:
    src = bytes.fromhex("fd310000000000000000000000000001")
    dst = bytes.fromhex("fd310000000000000000000000000002")
    return struct.pack("!IHBB16s16s", 6 << 28, len(rest) if plen is None else plen, nxt, 64, src, dst) + rest


def test_vlan_qinq_and_ip_options() -> None:
    frame = _eth(0x0800, _ipv4(6, _tcp(b"abc"), options=b"\x01\x01\x01\x00"), vlans=(0x88A8, 0x8100))
    p = parse_l4(frame)
    assert p is not None and (p.sport, p.dport, p.payload_len) == (40000, 443, 3)
    assert frame[p.payload_off : p.payload_off + 3] == b"abc"
    assert format_l4(p) == "10.231.0.1:40000 > 10.231.0.2:443 tcp"


def test_ethernet_padding_is_not_payload() -> None:
    frame = _eth(0x0800, _ipv4(6, _tcp(flags=0x10))) + b"\0" * 6  # padded to 60 bytes
    p = parse_l4(frame)
    assert p is not None and p.payload_len == 0 and format_flags(p.flags) == "."


def test_ipv4_fragments() -> None:
    udp = struct.pack("!HHHH", 5000, 53, 8 + 4, 0) + b"data"
    first = parse_l4(_eth(0x0800, _ipv4(17, udp, frag=0x2000)))
    assert first is not None and (first.sport, first.dport, first.fragment) == (5000, 53, False)
    later = parse_l4(_eth(0x0800, _ipv4(17, b"x" * 16, frag=0x2000 | 185)))
    assert later is not None and later.fragment and (later.sport, later.dport) == (0, 0)
    assert later.payload_len == 16


def test_ipv6_extension_headers() -> None:
    udp = struct.pack("!HHHH", 1000, 2000, 8, 0)
    hop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"  # hop-by-hop -> destination options
    dst = bytes([44, 0]) + b"\x01\x04\0\0\0\0"  # destination options -> fragment
    frag = bytes([17, 0]) + struct.pack("!H", 0) + b"\0\0\0\1"  # first fragment -> UDP
    p = parse_l4(_eth(0x86DD, _ipv6(0, hop + dst + frag + udp)))
    assert p is not None and p.family == 6 and (p.sport, p.dport) == (1000, 2000)
    assert format_addr(p.src) == "fd31::1"
    later = bytes([17, 0]) + struct.pack("!H", 185 << 3) + b"\0\0\0\1"
    q = parse_l4(_eth(0x86DD, _ipv6(44, later + b"y" * 8)))
    assert q is not None and q.fragment and q.sport == 0
    # An endless chain of extension headers stops after a bounded walk.
    loop = (bytes([60, 0]) + b"\0" * 6) * 20 + udp
    assert parse_l4(_eth(0x86DD, _ipv6(60, loop))) is None


def test_other_protocols_are_none() -> None:
    assert parse_l4(_eth(0x0806, b"\0" * 28)) is None  # ARP
    assert parse_l4(_eth(0x0800, _ipv4(1, b"\x08\0" + b"\0" * 6))) is None  # ICMP
    assert parse_l4(b"") is None


@pytest.mark.parametrize(
    "frame",
    [
        _eth(0x0800, _ipv4(6, _tcp(b"payload", opts=b"\x01\x01\x01\x01"))),
        _eth(0x86DD, _ipv6(17, struct.pack("!HHHH", 1, 2, 8, 0))),
        _eth(0x0800, _ipv4(17, struct.pack("!HHHH", 1, 2, 8, 0)), vlans=(0x8100,)),
    ],
)
def test_every_truncation_point_is_none_or_consistent(frame: bytes) -> None:
    full = parse_l4(frame)
    assert full is not None
    for cut in range(len(frame)):
        p = parse_l4(memoryview(frame)[:cut])
        # Cut before the ports: not placeable. Cut in the payload: same flow, same offsets.
        if p is not None:
            assert p[:10] == full[:10]
