"""pcap and pcapng: a sans-I/O reader and fast writers.

Reader: :class:`CaptureParser` takes bytes (``feed``) and hands back whole packets
(``records``); :func:`read_capture` drives it over a file in 1 MiB chunks. It reads classic
pcap (µs magic ``a1b2c3d4`` and ns magic ``a1b23c4d``, either byte order) and pcapng (SHB in
either byte order, IDB with ``if_name``/``if_tsresol``/``if_tsoffset``, EPB, SPB, the
obsolete OPB; every other block type is skipped by its length). A file that ends inside a
record raises :class:`TruncatedCapture` naming the byte offset, after every whole packet
before it has been yielded, so an importer keeps what is there.

Writers build blocks with precompiled structs and join them into large chunks: exporting a
million packets must not cost a million ``write`` calls. pcapng output has one SHB, one IDB
per ``node:iface`` (``if_name``, ``if_tsresol`` = 9, i.e. nanoseconds, snaplen) and one EPB
per packet with its original length and an optional ``opt_comment``. Classic pcap output
uses the nanosecond magic ``0xa1b23c4d``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Final, NamedTuple

from schemas.errors import RawcapError

__all__ = (
    "LINKTYPE_ETHERNET",
    "CaptureParser",
    "PcapError",
    "PcapWriter",
    "PcapngWriter",
    "Record",
    "TruncatedCapture",
    "read_capture",
)

LINKTYPE_ETHERNET: Final = 1

_PCAP_US: Final = 0xA1B2C3D4
_PCAP_NS: Final = 0xA1B23C4D
_SHB: Final = 0x0A0D0D0A
_BOM: Final = 0x1A2B3C4D
_IDB, _OPB, _SPB, _EPB = 1, 2, 3, 6
_MAX_BLOCK: Final = 64 * 1024 * 1024


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
        self._pcap_hdr: struct.Struct | None = None
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
        le, be = struct.unpack_from("<I", buf)[0], struct.unpack_from(">I", buf)[0]
        if le in (_PCAP_US, _PCAP_NS) or be in (_PCAP_US, _PCAP_NS):
            if len(buf) < 24:
                return False
            self._endian = "<" if le in (_PCAP_US, _PCAP_NS) else ">"
            magic, major, _minor, _tz, _sig, _snap, link = struct.unpack_from(self._endian + "IHHiIII", buf)
            self._ns = magic == _PCAP_NS
            if major != 2:
                raise PcapError(f"{self.name}: pcap version {major} is not supported")
            self._link = link & 0xFFFF
            self.linktypes.add(self._link)
            self._pcap_hdr = struct.Struct(self._endian + "IIII")
            self._kind = "pcap"
            self._drop(24)
            return True
        if le == _SHB:
            self._kind = "pcapng"
            return True
        raise PcapError(f"{self.name}: not a pcap or pcapng file (starts with {bytes(buf[:4]).hex()})")

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._consumed += n

    def _pcap_records(self) -> list[Record]:
        assert self._pcap_hdr is not None
        buf, out = self._buf, []
        view = memoryview(buf)
        unpack, pos, end = self._pcap_hdr.unpack_from, 0, len(buf)
        mul = 1 if self._ns else 1000
        link = self._link
        try:
            while pos + 16 <= end:
                sec, frac, caplen, origlen = unpack(view, pos)
                if caplen > _MAX_BLOCK:
                    raise PcapError(
                        f"{self.name}: record at byte {self._consumed + pos} claims {caplen} bytes (corrupt)"
                    )
                if pos + 16 + caplen > end:
                    break
                data = bytes(view[pos + 16 : pos + 16 + caplen])
                out.append(Record(sec * 1_000_000_000 + frac * mul, caplen, origlen, 0, link, data))
                pos += 16 + caplen
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
            while pos + 12 <= end:
                btype = struct.unpack_from(self._endian + "I", view, pos)[0]
                if btype == _SHB:
                    bom = struct.unpack_from("<I", view, pos + 8)[0]
                    if bom == _BOM:
                        self._endian = "<"
                    elif struct.unpack_from(">I", view, pos + 8)[0] == _BOM:
                        self._endian = ">"
                    else:
                        raise PcapError(
                            f"{self.name}: section header at byte {self._consumed + pos} "
                            "has no valid byte-order magic"
                        )
                blen = struct.unpack_from(self._endian + "I", view, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
                    raise PcapError(
                        f"{self.name}: block at byte {self._consumed + pos} has invalid length {blen}"
                    )
                if pos + blen > end:
                    break
                body = view[pos + 8 : pos + blen - 4]
                if btype == _SHB:
                    self._ifaces = []  # interface ids are per section
                elif btype == _IDB:
                    self._add_iface(body)
                elif btype == _EPB or btype == _OPB:
                    out.append(self._epb(body, btype, pos))
                elif btype == _SPB:
                    out.append(self._spb(body, pos))
                body.release()
                pos += blen
        finally:
            view.release()
        self._drop(pos)
        return out

    def _options(self, body: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
        e = self._endian
        pos = start
        while pos + 4 <= len(body):
            code, length = struct.unpack_from(e + "HH", body, pos)
            if code == 0:
                return
            yield code, body[pos + 4 : pos + 4 + length]
            pos += 4 + ((length + 3) & ~3)

    def _add_iface(self, body: memoryview) -> None:
        link, _res, snaplen = struct.unpack_from(self._endian + "HHI", body, 0)
        name: str | int = len(self._ifaces)
        mul, div, offset = 1000, 1, 0
        for code, value in self._options(body, 8):
            if code == 2:
                name = bytes(value).rstrip(b"\0").decode("utf-8", "replace")
            elif code == 9 and len(value) >= 1:
                mul, div = _tsresol(value[0])
            elif code == 14 and len(value) >= 8:
                offset = struct.unpack_from(self._endian + "q", value)[0] * 1_000_000_000
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
        e = self._endian
        if btype == _EPB:
            idx, hi, lo, caplen, origlen = struct.unpack_from(e + "IIIII", body, 0)
        else:
            idx, _drops, hi, lo, caplen, origlen = struct.unpack_from(e + "HHIIII", body, 0)
        if 20 + caplen > len(body):
            raise PcapError(f"{self.name}: packet at byte {self._consumed + pos} overruns its block")
        iface = self._iface(idx, pos)
        ts = (hi << 32) | lo
        ts_ns = ts * iface.mul // iface.div + iface.offset_ns
        return Record(ts_ns, caplen, origlen, iface.name, iface.linktype, bytes(body[20 : 20 + caplen]))

    def _spb(self, body: memoryview, pos: int) -> Record:
        origlen = struct.unpack_from(self._endian + "I", body, 0)[0]
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


# -- writers -------------------------------------------------------------------------------

_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")
_EPB_HDR = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


class PcapngWriter:
    """Builds pcapng bytes; the caller writes them (sans-I/O, so stdout, files and objects
    all work the same way)."""

    def __init__(self, *, snaplen: int = 262144, comment: str | None = None) -> None:
        self.snaplen = snaplen or 262144
        self._comment = comment
        self._ifaces: dict[tuple[str, int], int] = {}

    def header(self) -> bytes:
        opts = b""
        if self._comment:
            opts += _opt(1, self._comment.encode())
        opts += _opt(4, b"rawcap") + b"\0\0\0\0"
        length = 28 + len(opts)
        return struct.pack("<IIIHHq", _SHB, length, _BOM, 1, 0, -1) + opts + _U32.pack(length)

    def interface(self, name: str, linktype: int = LINKTYPE_ETHERNET) -> tuple[int, bytes]:
        """``(interface id, IDB bytes or b"" if already described)``."""
        key = (name, linktype)
        idx = self._ifaces.get(key)
        if idx is not None:
            return idx, b""
        idx = self._ifaces[key] = len(self._ifaces)
        opts = _opt(2, name.encode()) + _opt(9, b"\x09") + b"\0\0\0\0"
        length = 20 + len(opts)
        block = struct.pack("<IIHHI", _IDB, length, linktype, 0, self.snaplen) + opts + _U32.pack(length)
        return idx, block

    def forget_interface(self, name: str, linktype: int = LINKTYPE_ETHERNET) -> None:
        """Undo the newest :meth:`interface` whose IDB never reached the file."""
        key = (name, linktype)
        if self._ifaces.get(key) != len(self._ifaces) - 1:
            raise ValueError(f"interface {name!r} is not the newest one")
        del self._ifaces[key]

    @staticmethod
    def packets(
        iface: int,
        packets: Iterable[tuple[int, int, int, bytes | memoryview]],
        comment: bytes | None = None,
    ) -> list[bytes | memoryview]:
        """EPB parts for ``(ts_ns, caplen, origlen, data)`` tuples on one interface; join
        them (``b"".join``) or hand them to ``writelines``."""
        parts: list[bytes | memoryview] = []
        add = parts.append
        pack = _EPB_HDR.pack
        u32 = _U32.pack
        opts = b""
        if comment:
            opts = _opt(1, comment) + b"\0\0\0\0"
        olen = len(opts)
        for ts, caplen, origlen, data in packets:
            pad = -caplen & 3
            total = 32 + caplen + pad + olen
            add(pack(_EPB, total, iface, ts >> 32, ts & 0xFFFFFFFF, caplen, origlen))
            add(data)
            if olen:
                add(_PAD[pad] + opts + u32(total) if pad else opts + u32(total))
            else:
                add(_PAD[pad] + u32(total) if pad else u32(total))
        return parts


class PcapWriter:
    """Classic pcap with nanosecond timestamps (magic ``0xa1b23c4d``): one link type, no
    interface names. For tools that predate pcapng."""

    def __init__(self, *, snaplen: int = 262144, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.snaplen = snaplen or 262144
        self.linktype = linktype

    def header(self) -> bytes:
        return struct.pack("<IHHiIII", _PCAP_NS, 2, 4, 0, 0, self.snaplen, self.linktype)

    @staticmethod
    def packets(packets: Iterable[tuple[int, int, int, bytes | memoryview]]) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = []
        add = parts.append
        pack = struct.Struct("<IIII").pack
        for ts, caplen, origlen, data in packets:
            sec, ns = divmod(ts, 1_000_000_000)
            add(pack(sec, ns, caplen, origlen))
            add(data)
        return parts
