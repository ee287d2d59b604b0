"""Allocation-light L2-L4 decode of one Ethernet frame.

The dissector reassembles TCP at well over 100k packets/s and the forensics filters look at
every exported packet, so this module does the least work that answers "which flow is this
and where is its payload": ``struct.unpack_from`` straight on the buffer (bytes or
memoryview, never copied), addresses kept as packed ``bytes`` (4 or 16 bytes; hashing and
comparing them is cheap, :func:`format_addr` turns them into text only when a human looks),
and one small :class:`L4` tuple per packet.

Covered: Ethernet II, 802.1Q / 802.1ad (QinQ, any depth up to 4 tags), IPv4 with options and
fragments (a non-first fragment has no L4 header: ports and TCP fields are 0 and
``fragment`` is true), IPv6 with a bounded walk over extension headers (hop-by-hop, routing,
fragment, destination options, AH, mobility; at most 8), TCP and UDP. Anything else (ARP,
ICMP, ...) and anything truncated before the L4 ports returns ``None``: truncated is not an
error here, it is simply "not an L4 packet we can place".
"""

from __future__ import annotations

import socket
import struct
from typing import Final, NamedTuple

__all__ = (
    "ETH_P_8021AD",
    "ETH_P_8021Q",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "L4",
    "TCP_FLAG_NAMES",
    "format_addr",
    "format_flags",
    "format_l4",
    "parse_l4",
)

ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
ETH_P_8021Q: Final = 0x8100
ETH_P_8021AD: Final = 0x88A8
_VLAN_TYPES: Final = frozenset((ETH_P_8021Q, ETH_P_8021AD, 0x9100))
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

#: IPv6 extension headers that use the generic (next, hdr_ext_len) layout (AH differs).
_V6_EXT: Final = frozenset((0, 43, 60, 135, 139, 140))
_V6_FRAG: Final = 44
_V6_AH: Final = 51
_MAX_V6_EXT: Final = 8
_MAX_VLAN: Final = 4

_U16 = struct.Struct("!H").unpack_from
_V4 = struct.Struct("!BxHxxHxB2x4s4s").unpack_from  # vihl, total, frag, proto, src, dst
_V6 = struct.Struct("!4xHBx16s16s").unpack_from  # payload len, next, src, dst
_TCP = struct.Struct("!HHIIBB").unpack_from  # sport, dport, seq, ack, off, flags
_UDP = struct.Struct("!HHH").unpack_from  # sport, dport, length
_EXT = struct.Struct("!BB").unpack_from
_FRAG6 = struct.Struct("!BxH").unpack_from


class L4(NamedTuple):
    """Where a frame belongs and where its payload is.

    ``src``/``dst`` are packed addresses (4 bytes for IPv4, 16 for IPv6). ``payload_len`` is
    the length the IP header announces (the bytes on the wire, Ethernet padding excluded);
    with a snap length the frame may hold fewer, and ``data[payload_off:payload_off +
    payload_len]`` simply yields what was captured.
    """

    family: int  # 4 or 6
    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int  # 6 TCP, 17 UDP
    flags: int  # TCP flags byte (FIN 0x01 ... CWR 0x80); 0 for UDP
    seq: int
    ack: int
    payload_off: int
    payload_len: int
    fragment: bool = False  # a non-first IPv4/IPv6 fragment: no ports, payload is IP data


def parse_l4(data: bytes | memoryview | bytearray) -> L4 | None:
    """Decode one Ethernet frame down to TCP/UDP, or ``None`` if it is not (or is cut short)."""
    n = len(data)
    if n < 14:
        return None
    etype = _U16(data, 12)[0]
    off = 14
    tags = 0
    while etype in _VLAN_TYPES:
        if tags == _MAX_VLAN or off + 4 > n:
            return None
        etype = _U16(data, off + 2)[0]
        off += 4
        tags += 1
    if etype == ETH_P_IP:
        if off + 20 > n:
            return None
        vihl, total, frag, proto, src, dst = _V4(data, off)
        if vihl >> 4 != 4:
            return None
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or total < ihl:
            return None
        l4 = off + ihl
        l4_len = total - ihl
        family = 4
        if frag & 0x1FFF:
            if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
                return None
            return L4(4, src, dst, 0, 0, proto, 0, 0, 0, l4, l4_len, True)
    elif etype == ETH_P_IPV6:
        if off + 40 > n:
            return None
        if data[off] >> 4 != 6:
            return None
        plen, proto, src, dst = _V6(data, off)
        l4 = off + 40
        end = l4 + plen
        family = 6
        for _ in range(_MAX_V6_EXT):
            if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
                break
            if proto in _V6_EXT:
                if l4 + 2 > n:
                    return None
                nxt, hlen = _EXT(data, l4)
                l4 += (hlen + 1) * 8
            elif proto == _V6_FRAG:
                if l4 + 8 > n:
                    return None
                nxt, frag = _FRAG6(data, l4)
                l4 += 8
                if frag & 0xFFF8:
                    if nxt != IPPROTO_TCP and nxt != IPPROTO_UDP:
                        return None
                    return L4(6, src, dst, 0, 0, nxt, 0, 0, 0, l4, max(0, end - l4), True)
            elif proto == _V6_AH:
                if l4 + 2 > n:
                    return None
                nxt, hlen = _EXT(data, l4)
                l4 += (hlen + 2) * 4
            else:
                return None
            proto = nxt
        else:
            return None
        l4_len = end - l4
        if l4_len < 0:
            return None
    else:
        return None
    if proto == IPPROTO_TCP:
        if l4 + 14 > n:
            return None
        sport, dport, seq, ack, doff, flags = _TCP(data, l4)
        hl = (doff >> 4) * 4
        if hl < 20:
            return None
        return L4(family, src, dst, sport, dport, 6, flags, seq, ack, l4 + hl, max(0, l4_len - hl))
    if proto == IPPROTO_UDP:
        if l4 + 8 > n:
            return None
        sport, dport, _ulen = _UDP(data, l4)
        return L4(family, src, dst, sport, dport, 17, 0, 0, 0, l4 + 8, max(0, l4_len - 8))
    return None


def format_addr(addr: bytes) -> str:
    """Packed 4- or 16-byte address -> ``10.0.0.1`` / ``fd00::1``."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


TCP_FLAG_NAMES: Final = (
    (0x01, "F"),
    (0x02, "S"),
    (0x04, "R"),
    (0x08, "P"),
    (0x20, "U"),
    (0x40, "E"),
    (0x80, "W"),
    (0x10, "."),
)


def format_flags(flags: int) -> str:
    """TCP flags the way tcpdump prints them: ``S``, ``S.``, ``P.``, ``F.``, ``R``."""
    out = "".join(name for bit, name in TCP_FLAG_NAMES if flags & bit and bit != 0x10)
    return out + "." if flags & 0x10 else out or "none"


def format_l4(p: L4) -> str:
    """``10.0.0.1:1234 > 10.0.0.2:80 tcp`` (IPv6 addresses in brackets)."""
    s, d = format_addr(p.src), format_addr(p.dst)
    if p.family == 6:
        s, d = f"[{s}]", f"[{d}]"
    proto = "tcp" if p.proto == IPPROTO_TCP else "udp"
    if p.fragment:
        return f"{s} > {d} {proto} fragment"
    return f"{s}:{p.sport} > {d}:{p.dport} {proto}"
