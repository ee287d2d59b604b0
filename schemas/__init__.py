"""Wire formats shared by every rawcap service: the bottom of the import picture.

What it owns: the ``rawcap.packets`` batch (header and both body layouts, ``_batch.py``),
the TPACKET_V3 kernel layouts it carries (``_tpacket.py``), batch streams for files and
objects (:mod:`schemas.stream`), topic names and settings (:mod:`schemas.topics`), the
records of the other topics (``calls``, ``flows``, ``k8s``, ``procs``, ``control``) and the
error classes (:mod:`schemas.errors`). It imports nothing else of the project; services
import it and ``rawcap``, never each other. ``FORMAT.md`` beside this file is the prose
specification, ``tests/schemas/vectors/`` the golden bytes.
"""

from . import errors, stream, topics
from ._batch import (
    BODY_RECORDS,
    BODY_TPACKET3,
    FORMAT_VERSION,
    LINKTYPE_ETHERNET,
    MAGIC,
    Batch,
    BatchHeader,
    Packet,
    block_summary,
    decode_batch,
    decode_header,
    decompress_body,
    encode_batch,
    encode_block_batch,
    iter_packets,
)
from .errors import (
    BadMagic,
    BatchError,
    ConfigError,
    CorruptBody,
    RawcapError,
    RecordOverrun,
    TransportError,
    TruncatedBatch,
    UnsupportedVersion,
)

__all__ = (
    "BODY_RECORDS",
    "BODY_TPACKET3",
    "FORMAT_VERSION",
    "LINKTYPE_ETHERNET",
    "MAGIC",
    "BadMagic",
    "Batch",
    "BatchError",
    "BatchHeader",
    "ConfigError",
    "CorruptBody",
    "Packet",
    "RawcapError",
    "RecordOverrun",
    "TransportError",
    "TruncatedBatch",
    "UnsupportedVersion",
    "block_summary",
    "decode_batch",
    "decode_header",
    "decompress_body",
    "encode_batch",
    "encode_block_batch",
    "errors",
    "iter_packets",
    "stream",
    "topics",
)
