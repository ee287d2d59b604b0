"""pcap and pcapng, in one place: layouts, reader, writers and the batch-body converter.

What it owns: the byte layouts of classic pcap and pcapng (``_blocks.py``, declared once),
the sans-I/O reader (``_reader.py``: :class:`CaptureParser`, :func:`read_capture`), the
writers (``_writer.py``: :class:`PcapngWriter`, :class:`PcapWriter`), and the conversion of
a ``rawcap.packets`` batch body into Enhanced Packet Blocks (``_convert.py``: the Python
reference and its compiled twin ``_fastpcap.c``, which golden vectors hold to the same
bytes).
"""

from ._blocks import LINKTYPE_ETHERNET
from ._convert import FAST, FAST_ZSTD, Resolve, epbs, epbs_c, epbs_py, epbs_zstd
from ._reader import CaptureParser, PcapError, Record, TruncatedCapture, read_capture
from ._writer import PcapngWriter, PcapWriter

__all__ = (
    "FAST",
    "FAST_ZSTD",
    "LINKTYPE_ETHERNET",
    "CaptureParser",
    "PcapError",
    "PcapWriter",
    "PcapngWriter",
    "Record",
    "Resolve",
    "TruncatedCapture",
    "epbs",
    "epbs_c",
    "epbs_py",
    "epbs_zstd",
    "read_capture",
)
