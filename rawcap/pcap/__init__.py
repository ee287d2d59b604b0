"""pcap and pcapng, in one place: layouts, reader, writers and the batch-body converter.

What it owns: the byte layouts of classic pcap and pcapng (``_blocks.py``, declared once),
the sans-I/O reader (``_reader.py``: :class:`CaptureParser`, :func:`read_capture`), the
writers (``_writer.py``: :class:`PcapngWriter`, :class:`PcapWriter`), and the conversion of
a ``rawcap.packets`` batch body into Enhanced Packet Blocks (``_convert.py``: the Python
reference and its compiled twin ``_fastpcap.c``, which golden vectors hold to the same
bytes).
"""

from ._blocks import (
    EPB,
    EPB_JOIN,
    EPB_TRAIL,
    EPB_TYPE,
    LINKTYPE_ETHERNET,
    PAD,
    PCAP_HEADER,
    PCAP_HEADER_FIELDS,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAP_RECORD,
    PCAP_RECORD_FIELDS,
    U32,
    comment_options,
    epb_length,
    layout,
)
from ._convert import FAST, FAST_ZSTD, Resolve, epbs, epbs_c, epbs_py, epbs_zstd
from ._reader import CaptureParser, PcapError, Record, TruncatedCapture, read_capture
from ._writer import PcapngWriter, PcapWriter

__all__ = (
    "EPB",
    "EPB_JOIN",
    "EPB_TRAIL",
    "EPB_TYPE",
    "FAST",
    "FAST_ZSTD",
    "LINKTYPE_ETHERNET",
    "PAD",
    "PCAP_HEADER",
    "PCAP_HEADER_FIELDS",
    "PCAP_MAGIC_NS",
    "PCAP_MAGIC_US",
    "PCAP_RECORD",
    "PCAP_RECORD_FIELDS",
    "U32",
    "CaptureParser",
    "PcapError",
    "PcapWriter",
    "PcapngWriter",
    "Record",
    "Resolve",
    "TruncatedCapture",
    "comment_options",
    "epb_length",
    "epbs",
    "epbs_c",
    "epbs_py",
    "epbs_zstd",
    "layout",
    "read_capture",
)
