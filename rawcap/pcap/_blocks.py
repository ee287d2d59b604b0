"""pcap and pcapng byte layouts, declared once.

Every reader and writer of capture files in rawcap takes its layouts from here: the pcapng
reader and the writers (``_reader.py``, ``_writer.py``), the batch-body converter
(``_convert.py``) and the export sink (``forensics/_export.py``). The C converter
(``_fastpcap.c``) writes the same Enhanced Packet Blocks; golden vectors
(``tests/rawcap/pcap/vectors/``) pin them byte for byte for every path.

Layouts are little-endian as rawcap writes them; the reader builds the same field tables in
the byte order a file declares (:func:`layout`).
"""

from __future__ import annotations

import struct
from typing import Final

from schemas import LINKTYPE_ETHERNET

__all__ = (
    "BLOCK_HEAD",
    "BYTE_ORDER_MAGIC",
    "EPB",
    "EPB_FIELDS",
    "EPB_FIXED",
    "EPB_JOIN",
    "EPB_TRAIL",
    "EPB_TYPE",
    "IDB_BODY",
    "IDB_TYPE",
    "LINKTYPE_ETHERNET",
    "OPB_TYPE",
    "OPT_COMMENT",
    "OPT_ENDOFOPT",
    "OPT_IF_NAME",
    "OPT_IF_TSOFFSET",
    "OPT_IF_TSRESOL",
    "OPT_SHB_USERAPPL",
    "PAD",
    "PCAP_HEADER",
    "PCAP_HEADER_FIELDS",
    "PCAP_MAGIC_NS",
    "PCAP_MAGIC_US",
    "PCAP_RECORD",
    "PCAP_RECORD_FIELDS",
    "SHB_BODY",
    "SHB_TYPE",
    "SPB_TYPE",
    "U32",
    "comment_options",
    "epb_length",
    "layout",
    "option",
)


def layout(fields: tuple[tuple[str, str], ...], endian: str = "<") -> struct.Struct:
    """The struct of a (name, format) field table in a byte order; the names document it."""
    return struct.Struct(endian + "".join(fmt for _, fmt in fields))


# -- classic pcap ----------------------------------------------------------------------------
PCAP_MAGIC_US: Final = 0xA1B2C3D4  # microsecond timestamps
PCAP_MAGIC_NS: Final = 0xA1B23C4D  # nanosecond timestamps (what rawcap writes)
PCAP_HEADER_FIELDS: Final = (
    ("magic", "I"),
    ("version_major", "H"),
    ("version_minor", "H"),
    ("thiszone", "i"),
    ("sigfigs", "I"),
    ("snaplen", "I"),
    ("linktype", "I"),
)
PCAP_HEADER: Final = layout(PCAP_HEADER_FIELDS)  # 24 bytes
PCAP_RECORD_FIELDS: Final = (("ts_sec", "I"), ("ts_frac", "I"), ("caplen", "I"), ("origlen", "I"))
PCAP_RECORD: Final = layout(PCAP_RECORD_FIELDS)  # 16 bytes, then the packet

# -- pcapng ----------------------------------------------------------------------------------
SHB_TYPE: Final = 0x0A0D0D0A
IDB_TYPE, OPB_TYPE, SPB_TYPE, EPB_TYPE = 1, 2, 3, 6  # OPB: the obsolete packet block
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
#: Every block: type, total length (repeated as the block's last 4 bytes).
BLOCK_HEAD: Final = layout((("type", "I"), ("total_length", "I")))
#: Section header body: byte-order magic, version, section length (-1: not given).
SHB_BODY: Final = layout((("byte_order_magic", "I"), ("major", "H"), ("minor", "H"), ("length", "q")))
#: Interface description body: link type, reserved, snap length.
IDB_BODY: Final = layout((("linktype", "H"), ("reserved", "H"), ("snaplen", "I")))
#: Enhanced packet block up to its packet data (the block head included); then the data,
#: padding to 4 bytes, options, and the total length again.
EPB_FIELDS: Final = (
    ("type", "I"),
    ("total_length", "I"),
    ("interface_id", "I"),
    ("ts_high", "I"),  # the timestamp in if_tsresol units (ns for rawcap's IDBs), high word
    ("ts_low", "I"),
    ("caplen", "I"),
    ("origlen", "I"),
)
EPB: Final = layout(EPB_FIELDS)  # 28 bytes
U32: Final = struct.Struct("<I")  # the trailing total length
#: EPB bytes besides the packet, its padding and its options: the header and the trailer.
EPB_FIXED: Final = EPB.size + U32.size  # 32
PAD: Final = (b"", b"\0", b"\0\0", b"\0\0\0")
#: The previous EPB's padding (index: 0-3 bytes) and trailing length fused with the next
#: EPB's header: one ``pack`` per packet on the export's hot path.
EPB_JOIN: Final = tuple(struct.Struct(f"<{pad}xI" + EPB.format[1:]) for pad in range(4))
#: The last EPB's padding and trailing length.
EPB_TRAIL: Final = tuple(struct.Struct(f"<{pad}xI") for pad in range(4))

OPT_ENDOFOPT, OPT_COMMENT = 0, 1
OPT_IF_NAME, OPT_SHB_USERAPPL, OPT_IF_TSRESOL, OPT_IF_TSOFFSET = 2, 4, 9, 14
_OPT_HEAD: Final = struct.Struct("<HH")
_END_OF_OPTIONS: Final = b"\0\0\0\0"


def option(code: int, value: bytes) -> bytes:
    """One option: code, length, value padded to 4 bytes."""
    return _OPT_HEAD.pack(code, len(value)) + value + PAD[-len(value) % 4]


def comment_options(comment: bytes) -> bytes:
    """An ``opt_comment`` and the ``opt_endofopt`` after it: the options of one EPB."""
    return option(OPT_COMMENT, comment) + _END_OF_OPTIONS


def epb_length(caplen: int, options_len: int = 0) -> int:
    """The total length of an EPB of ``caplen`` packet bytes and ``options_len`` option bytes."""
    return EPB_FIXED + caplen + (-caplen & 3) + options_len


assert EPB.size == 28 and PCAP_RECORD.size == 16 and PCAP_HEADER.size == 24
