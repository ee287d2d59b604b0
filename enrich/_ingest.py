"""One ``rawcap.packets`` batch -> a flow table, without a Packet and an L4 tuple per packet.

Aggregation is the enricher's hot loop. The generic path (``decode_batch`` builds a list of
``Packet`` tuples with a memoryview each, ``parse_l4`` an ``L4`` tuple each) costs several
microseconds per packet; most packets are plain Ethernet + IPv4 (no options) + TCP/UDP, whose
flow fields sit at fixed offsets and come out of one ``struct.unpack_from``. Those take the
fast path; everything else (VLAN tags, IPv4 options, fragments, IPv6, short frames) goes
through :func:`rawcap.packet.parse_l4`, so the answer is the same either way
(``tests/enrich/test_units.py`` checks both paths agree frame by frame).

Both body layouts are specified in ``schemas/FORMAT.md`` ("Body layout ``rec``" and
"``tpacket3``"); each body is checked whole first (the bounds ``schemas.iter_packets``
checks), so a corrupt batch adds nothing and goes to the DLQ.
"""

from __future__ import annotations

import struct
from typing import Final

from rawcap.packet import parse_l4
from schemas import (
    BODY_RECORDS,
    BODY_TPACKET3,
    REC_HEADER,
    REC_HEADER_FIELDS,
    BatchHeader,
    CorruptBody,
    RecordOverrun,
    decode_header,
    decompress_body,
)
from schemas.tpacket import (
    BLOCK_DESC,
    BLOCK_DESC_FIELDS,
    FRAME_HDR_FIELDS,
    SOCKADDR_LL,
    SOCKADDR_LL_OFFSET,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    fields_view,
)

from ._flows import FlowTable

__all__ = ("add_batch", "decode_body")

# The fields used here of the layouts schemas declares (FORMAT.md, "Body layout rec" and
# "tpacket3"), each read where its structure starts.
_REC: Final = fields_view(REC_HEADER_FIELDS, ("ts_ns", "caplen", "origlen"))
_REC_SIZE: Final = REC_HEADER.size
_CAPLEN: Final = fields_view(REC_HEADER_FIELDS, ("caplen",))
#: Ethernet II + IPv4 without options + the first 14 bytes of TCP (UDP: ports and 6 bytes of
#: payload, ignored): etype, version/IHL, total length, frag, proto, src, dst, sport, dport,
#: TCP data offset, TCP flags
_FAST: Final = struct.Struct("!12xHBxH2xHxB2x4s4sHH8xBB")
_FAST_SIZE: Final = _FAST.size  # 48
_IPV4: Final = 0x0800
_BLOCK: Final = fields_view(BLOCK_DESC_FIELDS, ("num_pkts", "offset_to_first_pkt", "blk_len"))
_BLOCK_DESC_SIZE: Final = BLOCK_DESC.size
_FRAME: Final = fields_view(FRAME_HDR_FIELDS, ("tp_next_offset", "tp_sec", "tp_nsec", "tp_snaplen",
                                               "tp_len", "tp_status", "tp_mac"))
_FRAME_MIN: Final = SOCKADDR_LL_OFFSET + SOCKADDR_LL.size  # tpacket3_hdr + sockaddr_ll
_VLAN: Final = fields_view(FRAME_HDR_FIELDS, ("tp_vlan_tci", "tp_vlan_tpid"))
_VLAN_VALID: Final = TP_STATUS_VLAN_VALID
_VLAN_TPID_VALID: Final = TP_STATUS_VLAN_TPID_VALID


def decode_body(value: bytes | memoryview) -> tuple[BatchHeader, bytes | memoryview]:
    """Header and decompressed body of one batch (the checks of ``schemas.decode_batch``)."""
    header, offset = decode_header(value)
    return header, decompress_body(header, memoryview(value)[offset:])


def _check_records(view: memoryview, count: int) -> None:
    """Walk the record headers once, so a corrupt body adds nothing (all or nothing)."""
    end, pos, caplen_at = len(view), 0, _CAPLEN.unpack_from
    for i in range(count):
        if pos + _REC_SIZE > end:
            raise RecordOverrun(f"record {i} header runs past the end of the body")
        pos += _REC_SIZE + caplen_at(view, pos)[0]
        if pos > end:
            raise RecordOverrun(f"record {i} runs past the end of the body")
    if pos != end:
        raise RecordOverrun(f"{end - pos} bytes left after the last of {count} records")


def add_batch(table: FlowTable, header: BatchHeader, raw: bytes | memoryview, tag: int) -> tuple[int, int]:
    """Add every packet of a decoded batch to ``table``; returns (L4 packets, other packets).

    Raises :class:`schemas.RecordOverrun` for a body that does not hold what it announces,
    before adding anything (the caller sends the batch to the DLQ).
    """
    add = table.add_fields
    fast = _FAST.unpack_from
    l4_packets = other = 0
    if header.body == BODY_RECORDS:
        view = memoryview(raw)
        _check_records(view, header.count)
        pos, rec = 0, _REC.unpack_from
        for _ in range(header.count):
            ts, caplen, origlen = rec(view, pos)
            pos += _REC_SIZE
            stop = pos + caplen
            if caplen >= _FAST_SIZE:
                etype, vihl, total, frag, proto, src, dst, sport, dport, doff, flags = fast(view, pos)
                if etype == _IPV4 and vihl == 0x45 and total >= 20 and not frag & 0x1FFF:
                    if proto == 6 and doff >= 0x50:
                        add(ts, 6, 4, src, sport, dst, dport, flags, origlen, tag)
                        l4_packets += 1
                        pos = stop
                        continue
                    if proto == 17:
                        add(ts, 17, 4, src, sport, dst, dport, 0, origlen, tag)
                        l4_packets += 1
                        pos = stop
                        continue
            l4 = parse_l4(view[pos:stop])
            pos = stop
            if l4 is None:
                other += 1
                continue
            add(ts, l4.proto, l4.family, l4.src, l4.sport, l4.dst, l4.dport, l4.flags, origlen, tag)
            l4_packets += 1
        return l4_packets, other
    if header.body != BODY_TPACKET3:
        raise CorruptBody(f"unknown body layout {header.body!r}")
    view = memoryview(raw)
    _check_blocks(view, header.count)
    pos, end, frame_at = 0, len(view), _FRAME.unpack_from
    while pos < end:
        num, first_off, blk_len = _BLOCK.unpack_from(view, pos)
        frame = pos + first_off
        for _ in range(num):
            nxt, sec, nsec, snaplen, length, status, mac = frame_at(view, frame)
            start = frame + mac
            frame += nxt
            ts = sec * 1_000_000_000 + nsec
            if status & _VLAN_VALID and snaplen >= 12:  # the tag goes back in, as decoders do
                tci, tpid = _VLAN.unpack_from(view, frame - nxt)
                tpid = tpid if status & _VLAN_TPID_VALID and tpid else 0x8100
                data = bytes(view[start:start + 12]) + struct.pack("!HH", tpid, tci & 0xFFFF) \
                    + bytes(view[start + 12:start + snaplen])
                l4 = parse_l4(data)
                if l4 is None:
                    other += 1
                else:
                    add(ts, l4.proto, l4.family, l4.src, l4.sport, l4.dst, l4.dport, l4.flags,
                        length + 4, tag)
                    l4_packets += 1
                continue
            if snaplen >= _FAST_SIZE:
                etype, vihl, total, frag, proto, src, dst, sport, dport, doff, flags = fast(view, start)
                if etype == _IPV4 and vihl == 0x45 and total >= 20 and not frag & 0x1FFF:
                    if proto == 6 and doff >= 0x50:
                        add(ts, 6, 4, src, sport, dst, dport, flags, length, tag)
                        l4_packets += 1
                        continue
                    if proto == 17:
                        add(ts, 17, 4, src, sport, dst, dport, 0, length, tag)
                        l4_packets += 1
                        continue
            l4 = parse_l4(view[start:start + snaplen])
            if l4 is None:
                other += 1
                continue
            add(ts, l4.proto, l4.family, l4.src, l4.sport, l4.dst, l4.dport, l4.flags, length, tag)
            l4_packets += 1
        pos += blk_len
    return l4_packets, other


def _check_blocks(view: memoryview, count: int) -> None:
    """Every bound ``schemas.iter_packets`` checks, in one pass that adds nothing."""
    pos, end, seen, frame_at = 0, len(view), 0, _FRAME.unpack_from
    while pos < end:
        if pos + _BLOCK_DESC_SIZE > end:
            raise RecordOverrun("TPACKET_V3 block descriptor runs past the end of the body")
        num, first_off, blk_len = _BLOCK.unpack_from(view, pos)
        if blk_len < _BLOCK_DESC_SIZE or pos + blk_len > end:
            raise RecordOverrun(f"TPACKET_V3 block of {blk_len} bytes runs past the end of the body")
        block_end = pos + blk_len
        frame = pos + first_off
        for i in range(num):
            if frame + _FRAME_MIN > block_end:
                raise RecordOverrun(f"frame {i} header runs past the end of its block")
            nxt, _sec, _nsec, snaplen, _len, _status, mac = frame_at(view, frame)
            if frame + mac + snaplen > block_end:
                raise RecordOverrun(f"frame {i} ({snaplen} bytes) runs past the end of its block")
            seen += 1
            if nxt == 0 and i + 1 < num:
                raise RecordOverrun(f"frame {i} has no successor but the block announces {num}")
            frame += nxt
        pos = block_end
    if seen != count:
        raise RecordOverrun(f"body holds {seen} packets, header announces {count}")
