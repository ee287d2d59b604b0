"""TPACKET_V3 layouts (linux/if_packet.h), declared once as field tables.

The capture agent reads these structures from its mmap ring (and sets the ring up with
``tpacket_req3``), and every decoder of a batch body that carries ring blocks verbatim walks
the same structures (``schemas.iter_packets``, the enricher's flow walk, the C converter of
``rawcap/pcap/_fastpcap.c``, which golden vectors check). The layouts are stable kernel
UAPI, so a block written on one node decodes on any machine. A reader that needs only some
fields of a structure takes a :func:`fields_view` of its table rather than a layout of its own.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = (
    "BLOCK_DESC",
    "BLOCK_DESC_FIELDS",
    "FRAME_HDR",
    "FRAME_HDR_FIELDS",
    "SOCKADDR_LL",
    "SOCKADDR_LL_FIELDS",
    "SOCKADDR_LL_OFFSET",
    "TPACKET_REQ3_FIELDS",
    "TPACKET_STATS_V3_FIELDS",
    "TP_STATUS_VLAN_TPID_VALID",
    "TP_STATUS_VLAN_VALID",
    "build_block",
    "field_offset",
    "fields_struct",
    "fields_view",
)

Fields = tuple[tuple[str, str], ...]


def fields_struct(fields: Fields, endian: str = "<") -> struct.Struct:
    """The struct of a (name, format) table; the names document the layout. ``endian``:
    ``<`` for the wire (batch bodies are little-endian), ``=`` for the running kernel."""
    return struct.Struct(endian + "".join(fmt for _, fmt in fields))


def field_offset(fields: Fields, name: str) -> int:
    """Where field ``name`` starts in a (packed, as the kernel lays these out) table."""
    pos = 0
    for field_name, fmt in fields:
        if field_name == name:
            return pos
        pos += struct.calcsize("<" + fmt)
    raise KeyError(name)


def fields_view(fields: Fields, names: tuple[str, ...], endian: str = "<") -> struct.Struct:
    """A struct over the same bytes that unpacks only ``names`` (in table order), the other
    fields up to the last of them skipped as padding: ``fields_view(FRAME_HDR_FIELDS,
    ("tp_sec", "tp_nsec")).unpack_from(block, frame)`` reads them where the frame starts."""
    wanted = set(names)
    missing = wanted - {n for n, _ in fields}
    if missing:
        raise KeyError(", ".join(sorted(missing)))
    fmt, skip, taken = "", 0, 0
    for field_name, f in fields:
        if taken == len(wanted):
            break
        if field_name in wanted:
            fmt += (f"{skip}x" if skip else "") + f
            skip = 0
            taken += 1
        else:
            skip += struct.calcsize("<" + f)
    return struct.Struct(endian + fmt)


#: struct tpacket_block_desc { version; offset_to_priv; struct tpacket_hdr_v1 hdr; }
BLOCK_DESC_FIELDS: Final = (
    ("version", "I"),
    ("offset_to_priv", "I"),
    ("block_status", "I"),
    ("num_pkts", "I"),
    ("offset_to_first_pkt", "I"),
    ("blk_len", "I"),  # bytes used in this block, counted from the block start
    ("seq_num", "Q"),
    ("ts_first_sec", "I"),
    ("ts_first_nsec", "I"),
    ("ts_last_sec", "I"),
    ("ts_last_nsec", "I"),
)
BLOCK_DESC: Final = fields_struct(BLOCK_DESC_FIELDS)  # 48 bytes

#: struct tpacket3_hdr, including the tpacket_hdr_variant1 and trailing padding.
FRAME_HDR_FIELDS: Final = (
    ("tp_next_offset", "I"),
    ("tp_sec", "I"),
    ("tp_nsec", "I"),
    ("tp_snaplen", "I"),
    ("tp_len", "I"),
    ("tp_status", "I"),
    ("tp_mac", "H"),
    ("tp_net", "H"),
    ("tp_rxhash", "I"),
    ("tp_vlan_tci", "I"),
    ("tp_vlan_tpid", "H"),
    ("tp_padding", "H"),
    ("tp_padding2", "8s"),
)
FRAME_HDR: Final = fields_struct(FRAME_HDR_FIELDS)  # 48 bytes

#: struct sockaddr_ll follows the frame header at TPACKET_ALIGN(sizeof(tpacket3_hdr)).
SOCKADDR_LL_FIELDS: Final = (
    ("sll_family", "H"),
    ("sll_protocol", "H"),  # network byte order in the kernel; kept raw here
    ("sll_ifindex", "i"),
    ("sll_hatype", "H"),
    ("sll_pkttype", "B"),
    ("sll_halen", "B"),
    ("sll_addr", "8s"),
)
SOCKADDR_LL: Final = fields_struct(SOCKADDR_LL_FIELDS)  # 20 bytes
SOCKADDR_LL_OFFSET: Final = (FRAME_HDR.size + 15) & ~15

TP_STATUS_VLAN_VALID: Final = 1 << 4
TP_STATUS_VLAN_TPID_VALID: Final = 1 << 6

#: struct tpacket_req3: how the agent asks for its ring (native byte order).
TPACKET_REQ3_FIELDS: Final = (
    ("tp_block_size", "I"),
    ("tp_block_nr", "I"),
    ("tp_frame_size", "I"),
    ("tp_frame_nr", "I"),
    ("tp_retire_blk_tov", "I"),  # ms
    ("tp_sizeof_priv", "I"),
    ("tp_feature_req_word", "I"),
)
#: struct tpacket_stats_v3 (PACKET_STATISTICS; reading it resets the kernel's counters).
TPACKET_STATS_V3_FIELDS: Final = (("tp_packets", "I"), ("tp_drops", "I"), ("tp_freeze_q_cnt", "I"))

assert BLOCK_DESC.size == 48 and FRAME_HDR.size == 48 and SOCKADDR_LL.size == 20


def build_block(
    frames: list[tuple[int, int, int, int, bytes]], *, seq: int = 1, block_size: int = 0
) -> bytes:
    """Lay out a retired TPACKET_V3 block the way the kernel does (for tests and vectors).

    ``frames`` are ``(ts_ns, origlen, ifindex, pkttype, data)``. Each frame is the 48-byte
    header, the sockaddr_ll, padding so the packet starts 16-byte aligned, then the data;
    frames are 16-byte aligned. ``blk_len`` counts the used bytes from the block start.
    """
    mac_off = (SOCKADDR_LL_OFFSET + SOCKADDR_LL.size + 15) & ~15
    first = BLOCK_DESC.size
    parts: list[bytes] = []
    pos = first
    for i, (ts, origlen, ifindex, pkttype, data) in enumerate(frames):
        frame_len = (mac_off + len(data) + 15) & ~15
        nxt = frame_len if i + 1 < len(frames) else 0
        hdr = FRAME_HDR.pack(
            nxt, ts // 1_000_000_000, ts % 1_000_000_000, len(data), origlen, 1,
            mac_off, mac_off + 14, 0, 0, 0, 0, b"\0" * 8,
        )
        sll = SOCKADDR_LL.pack(17, 0x0008, ifindex, 1, pkttype, 6, b"\0" * 8)
        frame = hdr + sll
        frame += b"\0" * (mac_off - len(frame)) + data
        frame += b"\0" * (frame_len - len(frame))
        parts.append(frame)
        pos += frame_len
    t0 = frames[0][0] if frames else 0
    t1 = frames[-1][0] if frames else 0
    desc = BLOCK_DESC.pack(
        3, BLOCK_DESC.size, 1, len(frames), first, pos, seq,
        t0 // 1_000_000_000, t0 % 1_000_000_000, t1 // 1_000_000_000, t1 % 1_000_000_000,
    )
    block = desc + b"".join(parts)
    return block + b"\0" * max(0, block_size - len(block))
