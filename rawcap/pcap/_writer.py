"""pcapng and classic pcap writers: sans-I/O, they return bytes for the caller to write.

Blocks are built with the precompiled layouts of ``_blocks.py`` and handed out as lists of
parts for one large write: exporting a million packets must not cost a million ``write``
calls. pcapng output has one SHB, one IDB per ``node:iface`` (``if_name``, ``if_tsresol`` =
9, i.e. nanoseconds, snaplen) and one EPB per packet with its original length and an
optional ``opt_comment``. Classic pcap output uses the nanosecond magic ``0xa1b23c4d``.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._blocks import (
    BLOCK_HEAD,
    BYTE_ORDER_MAGIC,
    EPB,
    EPB_TYPE,
    IDB_BODY,
    IDB_TYPE,
    LINKTYPE_ETHERNET,
    OPT_COMMENT,
    OPT_IF_NAME,
    OPT_IF_TSRESOL,
    OPT_SHB_USERAPPL,
    PAD,
    PCAP_HEADER,
    PCAP_MAGIC_NS,
    PCAP_RECORD,
    SHB_BODY,
    SHB_TYPE,
    U32,
    comment_options,
    epb_length,
    option,
)

__all__ = ("PcapWriter", "PcapngWriter")

_END_OF_OPTIONS = b"\0\0\0\0"


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
            opts += option(OPT_COMMENT, self._comment.encode())
        opts += option(OPT_SHB_USERAPPL, b"rawcap") + _END_OF_OPTIONS
        length = BLOCK_HEAD.size + SHB_BODY.size + len(opts) + U32.size
        return (BLOCK_HEAD.pack(SHB_TYPE, length) + SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + opts
                + U32.pack(length))

    def interface(self, name: str, linktype: int = LINKTYPE_ETHERNET) -> tuple[int, bytes]:
        """``(interface id, IDB bytes or b"" if already described)``."""
        key = (name, linktype)
        idx = self._ifaces.get(key)
        if idx is not None:
            return idx, b""
        idx = self._ifaces[key] = len(self._ifaces)
        opts = option(OPT_IF_NAME, name.encode()) + option(OPT_IF_TSRESOL, b"\x09") + _END_OF_OPTIONS
        length = BLOCK_HEAD.size + IDB_BODY.size + len(opts) + U32.size
        block = (BLOCK_HEAD.pack(IDB_TYPE, length) + IDB_BODY.pack(linktype, 0, self.snaplen) + opts
                 + U32.pack(length))
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
        pack = EPB.pack
        u32 = U32.pack
        opts = comment_options(comment) if comment else b""
        olen = len(opts)
        for ts, caplen, origlen, data in packets:
            pad = -caplen & 3
            total = epb_length(caplen, olen)
            add(pack(EPB_TYPE, total, iface, ts >> 32, ts & 0xFFFFFFFF, caplen, origlen))
            add(data)
            add(PAD[pad] + opts + u32(total))
        return parts


class PcapWriter:
    """Classic pcap with nanosecond timestamps (magic ``0xa1b23c4d``): one link type, no
    interface names. For tools that predate pcapng."""

    def __init__(self, *, snaplen: int = 262144, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.snaplen = snaplen or 262144
        self.linktype = linktype

    def header(self) -> bytes:
        return PCAP_HEADER.pack(PCAP_MAGIC_NS, 2, 4, 0, 0, self.snaplen, self.linktype)

    @staticmethod
    def packets(packets: Iterable[tuple[int, int, int, bytes | memoryview]]) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = []
        add = parts.append
        pack = PCAP_RECORD.pack
        for ts, caplen, origlen, data in packets:
            sec, ns = divmod(ts, 1_000_000_000)
            add(pack(sec, ns, caplen, origlen))
            add(data)
        return parts
