"""The pcap and pcapng reader: sans-I/O, bytes in, packet records out.

:class:`CaptureParser` takes bytes (``feed``) and hands back whole packets (``records``);
:func:`read_capture` drives it over a file in 1 MiB chunks. It reads classic pcap (µs magic
``a1b2c3d4`` and ns magic ``a1b23c4d``, either byte order) and pcapng (SHB in either byte
order, IDB with ``if_name``/``if_tsresol``/``if_tsoffset``, EPB, SPB, the obsolete OPB;
every other block type is skipped by its length). A file that ends inside a record raises
:class:`TruncatedCapture` naming the byte offset, after every whole packet before it has
been yielded, so an importer keeps what is there. The layouts are ``_blocks.py``'s.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO, Final, NamedTuple

from schemas.errors import RawcapError

from ._blocks import (
    BLOCK_HEAD,
    BYTE_ORDER_MAGIC,
    EPB_FIELDS,
    EPB_TYPE,
    IDB_BODY,
    IDB_TYPE,
    LINKTYPE_ETHERNET,
    OPB_TYPE,
    OPT_ENDOFOPT,
    OPT_IF_NAME,
    OPT_IF_TSOFFSET,
    OPT_IF_TSRESOL,
    PCAP_HEADER,
    PCAP_HEADER_FIELDS,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAP_RECORD,
    PCAP_RECORD_FIELDS,
    SHB_TYPE,
    SPB_TYPE,
    layout,
)

__all__ = (
    "CaptureParser",
    "PcapError",
    "Record",
    "TruncatedCapture",
    "read_capture",
)

_MAX_BLOCK: Final = 64 * 1024 * 1024
#: The obsolete packet block's fixed part (after the block head): interface id, drops,
#: timestamp high and low, caplen, origlen.
_OPB_FIELDS: Final = (("interface_id", "H"), ("drops", "H"), *EPB_FIELDS[3:])
_MAGICS: Final = (PCAP_MAGIC_US, PCAP_MAGIC_NS)


class _Layouts(NamedTuple):
    """The layouts a reader needs, in one byte order (a file's own)."""

    pcap_header: struct.Struct
    pcap_record: struct.Struct
    u32: struct.Struct
    idb: struct.Struct
    epb: struct.Struct  # after the block head: interface id .. origlen
    opb: struct.Struct
    option: struct.Struct
    i64: struct.Struct

    @classmethod
    def of(cls, endian: str) -> _Layouts:
        return cls(layout(PCAP_HEADER_FIELDS, endian), layout(PCAP_RECORD_FIELDS, endian),
                   struct.Struct(endian + "I"), struct.Struct(endian + IDB_BODY.format[1:]),
                   layout(EPB_FIELDS[2:], endian), layout(_OPB_FIELDS, endian),
                   struct.Struct(endian + "HH"), struct.Struct(endian + "q"))


_BY_ORDER: Final = {"<": _Layouts.of("<"), ">": _Layouts.of(">")}


class PcapError(RawcapError):
    """The input is not a pcap/pcapng file, or is corrupt."""


class TruncatedCapture(PcapError):
    """The file ends inside a record or block."""


class Record(NamedTuple):
    ts_ns: int
    caplen: int
    origlen: int
    iface: str | int  # pcapng if_name when the IDB has one, else the interface index
    linktype: int
    data: bytes | memoryview


class _Iface(NamedTuple):
    name: str | int
    linktype: int
    snaplen: int
    mul: int  # ts units -> ns: ns = ts * mul // div + offset
    div: int
    offset_ns: int


def _tsresol(code: int) -> tuple[int, int]:
    if code & 0x80:
        return 1_000_000_000, 1 << (code & 0x7F)
    exp = code & 0x7F
    return (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))


class CaptureParser:
    """Sans-I/O pcap/pcapng parser: ``feed(bytes)``, then ``records()``; ``close()`` at EOF."""

    def __init__(self, name: str = "capture") -> None:
        self.name = name
        self._buf = bytearray()
        self._consumed = 0  # bytes of the file before _buf[0]
        self._kind: str | None = None  # "pcap" | "pcapng"
        self._endian = "<"
        self._lay = _BY_ORDER["<"]
        self._ns = False
        self._link = LINKTYPE_ETHERNET
        self._ifaces: list[_Iface] = []
        self.linktypes: set[int] = set()

    @property
    def kind(self) -> str | None:
        return self._kind

    def feed(self, data: bytes | memoryview) -> None:
        self._buf += data

    def close(self) -> None:
        """Call at end of file: raises if the file ends inside a record."""
        if self._kind is None:
            if self._buf:
                raise TruncatedCapture(f"{self.name}: {len(self._buf)} bytes, too short for a capture header")
            raise PcapError(f"{self.name}: empty file, not a pcap or pcapng capture")
        if self._buf:
            raise TruncatedCapture(
                f"{self.name}: truncated: file ends inside a {self._kind} record at byte "
                f"{self._consumed} ({len(self._buf)} bytes left over)"
            )

    def records(self) -> list[Record]:
        """Every whole record fed so far (their data are copies, safe to keep)."""
        if self._kind is None and not self._sniff():
            return []
        out = self._pcap_records() if self._kind == "pcap" else self._pcapng_records()
        return out

    # -- classic pcap ----------------------------------------------------------------------
    def _sniff(self) -> bool:
        buf = self._buf
        if len(buf) < 4:
            return False
        le, be = _BY_ORDER["<"].u32.unpack_from(buf)[0], _BY_ORDER[">"].u32.unpack_from(buf)[0]
        if le in _MAGICS or be in _MAGICS:
            if len(buf) < PCAP_HEADER.size:
                return False
            self._set_order("<" if le in _MAGICS else ">")
            magic, major, _minor, _tz, _sig, _snap, link = self._lay.pcap_header.unpack_from(buf)
            self._ns = magic == PCAP_MAGIC_NS
            if major != 2:
                raise PcapError(f"{self.name}: pcap version {major} is not supported")
            self._link = link & 0xFFFF
            self.linktypes.add(self._link)
            self._kind = "pcap"
            self._drop(PCAP_HEADER.size)
            return True
        if le == SHB_TYPE:
            self._kind = "pcapng"
            return True
        raise PcapError(f"{self.name}: not a pcap or pcapng file (starts with {bytes(buf[:4]).hex()})")

    def _set_order(self, endian: str) -> None:
        self._endian, self._lay = endian, _BY_ORDER[endian]

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._consumed += n

    def _pcap_records(self) -> list[Record]:
        buf, out = self._buf, []
        view = memoryview(buf)
        unpack, pos, end = self._lay.pcap_record.unpack_from, 0, len(buf)
        hsize = PCAP_RECORD.size
        mul = 1 if self._ns else 1000
        link = self._link
        try:
            while pos + hsize <= end:
                sec, frac, caplen, origlen = unpack(view, pos)
                if caplen > _MAX_BLOCK:
                    raise PcapError(
                        f"{self.name}: record at byte {self._consumed + pos} claims {caplen} bytes (corrupt)"
                    )
                if pos + hsize + caplen > end:
                    break
                data = bytes(view[pos + hsize : pos + hsize + caplen])
                out.append(Record(sec * 1_000_000_000 + frac * mul, caplen, origlen, 0, link, data))
                pos += hsize + caplen
        finally:
            view.release()
        self._drop(pos)
        return out

    # -- pcapng ----------------------------------------------------------------------------
    def _pcapng_records(self) -> list[Record]:
        buf, out = self._buf, []
        view = memoryview(buf)
        pos, end = 0, len(buf)
        try:
            head = BLOCK_HEAD.size
            while pos + head + 4 <= end:
                btype = self._lay.u32.unpack_from(view, pos)[0]
                if btype == SHB_TYPE:
                    if _BY_ORDER["<"].u32.unpack_from(view, pos + head)[0] == BYTE_ORDER_MAGIC:
                        self._set_order("<")
                    elif _BY_ORDER[">"].u32.unpack_from(view, pos + head)[0] == BYTE_ORDER_MAGIC:
                        self._set_order(">")
                    else:
                        raise PcapError(
                            f"{self.name}: section header at byte {self._consumed + pos} "
                            "has no valid byte-order magic"
                        )
                blen = self._lay.u32.unpack_from(view, pos + 4)[0]
                if blen < head + 4 or blen % 4 or blen > _MAX_BLOCK:
                    raise PcapError(
                        f"{self.name}: block at byte {self._consumed + pos} has invalid length {blen}"
                    )
                if pos + blen > end:
                    break
                body = view[pos + head : pos + blen - 4]
                if btype == SHB_TYPE:
                    self._ifaces = []  # interface ids are per section
                elif btype == IDB_TYPE:
                    self._add_iface(body)
                elif btype == EPB_TYPE or btype == OPB_TYPE:
                    out.append(self._epb(body, btype, pos))
                elif btype == SPB_TYPE:
                    out.append(self._spb(body, pos))
                body.release()
                pos += blen
        finally:
            view.release()
        self._drop(pos)
        return out

    def _options(self, body: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
        unpack = self._lay.option.unpack_from
        pos = start
        while pos + 4 <= len(body):
            code, length = unpack(body, pos)
            if code == OPT_ENDOFOPT:
                return
            yield code, body[pos + 4 : pos + 4 + length]
            pos += 4 + ((length + 3) & ~3)

    def _add_iface(self, body: memoryview) -> None:
        link, _res, snaplen = self._lay.idb.unpack_from(body, 0)
        name: str | int = len(self._ifaces)
        mul, div, offset = 1000, 1, 0
        for code, value in self._options(body, IDB_BODY.size):
            if code == OPT_IF_NAME:
                name = bytes(value).rstrip(b"\0").decode("utf-8", "replace")
            elif code == OPT_IF_TSRESOL and len(value) >= 1:
                mul, div = _tsresol(value[0])
            elif code == OPT_IF_TSOFFSET and len(value) >= 8:
                offset = self._lay.i64.unpack_from(value)[0] * 1_000_000_000
        self.linktypes.add(link)
        self._ifaces.append(_Iface(name, link, snaplen, mul, div, offset))

    def _iface(self, idx: int, pos: int) -> _Iface:
        if idx >= len(self._ifaces):
            raise PcapError(
                f"{self.name}: packet block at byte {self._consumed + pos} names "
                f"interface {idx}, but only {len(self._ifaces)} are described"
            )
        return self._ifaces[idx]

    def _epb(self, body: memoryview, btype: int, pos: int) -> Record:
        if btype == EPB_TYPE:
            idx, hi, lo, caplen, origlen = self._lay.epb.unpack_from(body, 0)
            start = self._lay.epb.size
        else:
            idx, _drops, hi, lo, caplen, origlen = self._lay.opb.unpack_from(body, 0)
            start = self._lay.opb.size
        if start + caplen > len(body):
            raise PcapError(f"{self.name}: packet at byte {self._consumed + pos} overruns its block")
        iface = self._iface(idx, pos)
        ts = (hi << 32) | lo
        ts_ns = ts * iface.mul // iface.div + iface.offset_ns
        return Record(ts_ns, caplen, origlen, iface.name, iface.linktype, bytes(body[start : start + caplen]))

    def _spb(self, body: memoryview, pos: int) -> Record:
        origlen = self._lay.u32.unpack_from(body, 0)[0]
        iface = self._iface(0, pos)
        caplen = min(origlen, len(body) - 4, iface.snaplen or origlen)
        # An SPB has no timestamp; 0 is what Wireshark shows too.
        return Record(
            iface.offset_ns, caplen, origlen, iface.name, iface.linktype, bytes(body[4 : 4 + caplen])
        )


def read_capture(fh: BinaryIO, *, name: str = "capture", chunk: int = 1 << 20) -> Iterator[list[Record]]:
    """Yield lists of records from a pcap/pcapng file object; raises at a truncated end."""
    parser = CaptureParser(name)
    while True:
        data = fh.read(chunk)
        if not data:
            break
        parser.feed(data)
        recs = parser.records()
        if recs:
            yield recs
    recs = parser.records()
    if recs:
        yield recs
    parser.close()
