"""Wire formats shared by every rawcap service: the bottom of the import picture.

What it owns: the ``rawcap.packets`` batch (header and both body layouts, ``_batch.py``),
the TPACKET_V3 kernel layouts it carries (:mod:`schemas.tpacket`), batch streams for files and
objects (:mod:`schemas.stream`), topic names and settings (:mod:`schemas.topics`), the
records of the other topics (``calls``, ``flows``, ``k8s``, ``procs``, ``control``) and the
error classes (:mod:`schemas.errors`). It imports nothing else of the project; services
import it and ``rawcap``, never each other. ``FORMAT.md`` beside this file is the prose
specification, ``tests/schemas/vectors/`` the golden bytes.
"""

from . import errors, stream, topics, tpacket
from ._batch import (
    BODY_RECORDS,
    BODY_TPACKET3,
    FORMAT_VERSION,
    LINKTYPE_ETHERNET,
    MAGIC,
    MAX_BODY_BYTES,
    REC_HEADER,
    REC_HEADER_FIELDS,
    REC_HEADER_SPLIT,
    Batch,
    BatchHeader,
    Packet,
    block_summary,
    decode_batch,
    decode_header,
    decompress_body,
    encode_batch,
    encode_block_batch,
    encode_header,
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
    "MAX_BODY_BYTES",
    "REC_HEADER",
    "REC_HEADER_FIELDS",
    "REC_HEADER_SPLIT",
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
    "encode_header",
    "errors",
    "iter_packets",
    "stream",
    "topics",
    "tpacket",
)
