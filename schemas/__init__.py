"""Wire formats shared by every rawcap service: batches, topic names, errors.

Services import this package and nothing of each other; ``FORMAT.md`` beside this file is
the prose specification, ``tests/schemas/vectors/`` the golden bytes.
"""

from . import errors, topics
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
    "topics",
)
