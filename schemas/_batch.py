"""The ``rawcap.packets`` batch: encoder and decoder for format major version 1.

A batch is ``MAGIC | msgpack header | body``. The header is small and uncompressed so that a
shipper, archiver or time-window reader can route a batch without touching its body. The
body is zstd-compressed and holds packets in one of two layouts (``FORMAT.md`` specifies
both): ``rec`` records written by rawcap itself, or ``tpacket3`` kernel ring blocks copied
verbatim, which lets the capture agent ship a block without a per-packet Python loop.

Decoding decompresses the body once and hands out ``memoryview`` slices of it: a packet's
bytes are copied exactly once (by the decompressor) unless a VLAN tag has to be re-inserted.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import msgpack
import zstandard

from .errors import BadMagic, CorruptBody, RecordOverrun, TruncatedBatch, UnsupportedVersion
from .tpacket import (
    BLOCK_DESC,
    FRAME_HDR,
    SOCKADDR_LL,
    SOCKADDR_LL_OFFSET,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    fields_struct,
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
    "Batch",
    "BatchHeader",
    "Packet",
    "block_summary",
    "decode_batch",
    "decode_header",
    "decompress_body",
    "encode_batch",
    "encode_block_batch",
    "encode_header",
    "iter_packets",
)

MAGIC: Final = b"RCAP"
FORMAT_VERSION: Final = (1, 0)
BODY_RECORDS: Final = "rec"
BODY_TPACKET3: Final = "tpacket3"
LINKTYPE_ETHERNET: Final = 1
#: Refuse to inflate a body larger than this: a corrupt or hostile header must not make a
#: consumer allocate gigabytes.
MAX_BODY_BYTES: Final = 256 * 1024 * 1024
#: ``rec`` record header (``FORMAT.md``); the packet's bytes follow it.
REC_HEADER_FIELDS: Final = (
    ("ts_ns", "Q"),
    ("caplen", "I"),
    ("origlen", "I"),
    ("ifindex", "i"),
    ("pkttype", "B"),
    ("pad", "3x"),
)
REC_HEADER: Final = fields_struct(REC_HEADER_FIELDS)  # 24 bytes
#: The same header read as (ts_ns low word, high word, caplen, origlen, ifindex): the
#: timestamp's halves come out without a shift, the way a pcapng EPB wants them.
REC_HEADER_SPLIT: Final = struct.Struct("<IIIIi4x")
assert REC_HEADER.size == REC_HEADER_SPLIT.size == 24

# Packet directions are the kernel's sll_pkttype values (PACKET_HOST, PACKET_OUTGOING, ...).
PACKET_OUTGOING: Final = 4

_ZSTD_LEVEL_DEFAULT: Final = 1


class Packet(NamedTuple):
    """One captured packet. ``data`` is a view into the decoded body (or bytes when built)."""

    ts_ns: int
    caplen: int
    origlen: int
    ifindex: int
    pkttype: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """What a reader may learn about a batch without decompressing it."""

    node: str
    seq: int
    count: int
    first_ns: int
    last_ns: int
    ifaces: dict[int, str]
    linktype: int = LINKTYPE_ETHERNET
    body: str = BODY_RECORDS
    codec: str = "zstd"
    body_len: int = 0
    snaplen: int = 0
    version: tuple[int, int] = FORMAT_VERSION
    #: Keys written by a newer minor version, kept so that re-encoding loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_msgpack_map(self) -> dict[str, Any]:
        """Header as written on the wire; key order is fixed so encodings are reproducible."""
        out: dict[str, Any] = {
            "v": list(self.version),
            "node": self.node,
            "seq": self.seq,
            "n": self.count,
            "t0": self.first_ns,
            "t1": self.last_ns,
            "ifaces": {int(k): v for k, v in sorted(self.ifaces.items())},
            "link": self.linktype,
            "body": self.body,
            "codec": self.codec,
            "blen": self.body_len,
            "snap": self.snaplen,
        }
        out.update(self.extra)
        return out


class Batch(NamedTuple):
    header: BatchHeader
    packets: list[Packet]


_KNOWN_KEYS: Final = frozenset(
    ("v", "node", "seq", "n", "t0", "t1", "ifaces", "link", "body", "codec", "blen", "snap")
)


def encode_header(header: BatchHeader) -> bytes:
    """``MAGIC`` and the msgpack header: the bytes of a batch before its body (every writer
    of batches, the capture agent's batcher included, lays the header out with this)."""
    return MAGIC + msgpack.packb(header.to_msgpack_map(), use_bin_type=True)


def _compress(chunks: Iterable[bytes | memoryview], level: int) -> bytes:
    """zstd frame with content size unknown-safe streaming and a checksum for corruption."""
    cobj = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
    parts = [cobj.compress(chunk) for chunk in chunks]
    parts.append(cobj.flush())
    return b"".join(parts)


def encode_batch(
    *,
    node: str,
    seq: int,
    packets: Sequence[Packet],
    ifaces: dict[int, str],
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 0,
    level: int = _ZSTD_LEVEL_DEFAULT,
    codec: str = "zstd",
) -> bytes:
    """Encode packets into a ``rec`` batch (used by pcap import, tests and vectors)."""
    body_parts: list[bytes | memoryview] = []
    for p in packets:
        body_parts.append(REC_HEADER.pack(p.ts_ns, p.caplen, p.origlen, p.ifindex, p.pkttype))
        body_parts.append(p.data)
    raw_body = b"".join(body_parts)
    header = BatchHeader(
        node=node,
        seq=seq,
        count=len(packets),
        first_ns=min((p.ts_ns for p in packets), default=0),
        last_ns=max((p.ts_ns for p in packets), default=0),
        ifaces=ifaces,
        linktype=linktype,
        body=BODY_RECORDS,
        codec=codec,
        body_len=len(raw_body),
        snaplen=snaplen,
    )
    body = _compress([raw_body], level) if codec == "zstd" else raw_body
    return encode_header(header) + body


def block_summary(block: bytes | memoryview) -> tuple[int, int, int, int]:
    """``(num_pkts, first_ns, last_ns, blk_len)`` of a TPACKET_V3 block, read from its
    descriptor alone (the kernel fills these in when it retires the block)."""
    (_v, _priv, _st, num, _first, blk_len, _seq, s0, n0, s1, n1) = BLOCK_DESC.unpack_from(block)
    return num, s0 * 1_000_000_000 + n0, s1 * 1_000_000_000 + n1, blk_len


def encode_block_batch(
    *,
    node: str,
    seq: int,
    blocks: Sequence[bytes | memoryview],
    ifaces: dict[int, str],
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 0,
    level: int = _ZSTD_LEVEL_DEFAULT,
    compressor: zstandard.ZstdCompressor | None = None,
) -> bytes:
    """Encode retired ring blocks verbatim (each trimmed to its ``blk_len``).

    Compresses straight from the given buffers (typically views of the mmap ring), so the
    caller can release a block as soon as this returns.
    """
    count, first, last, body_len = 0, 0, 0, 0
    used: list[memoryview] = []
    for block in blocks:
        num, t0, t1, blk_len = block_summary(block)
        if num == 0:
            continue
        first = t0 if count == 0 else min(first, t0)
        last = max(last, t1)
        count += num
        body_len += blk_len
        used.append(memoryview(block)[:blk_len])
    header = BatchHeader(
        node=node,
        seq=seq,
        count=count,
        first_ns=first,
        last_ns=last,
        ifaces=ifaces,
        linktype=linktype,
        body=BODY_TPACKET3,
        codec="zstd",
        body_len=body_len,
        snaplen=snaplen,
    )
    if compressor is None:
        body = _compress(used, level)
    else:
        cobj = compressor.compressobj()
        body = b"".join([*(cobj.compress(u) for u in used), cobj.flush()])
    return encode_header(header) + body


def decode_header(value: bytes | memoryview) -> tuple[BatchHeader, int]:
    """Parse the header only; returns it and the offset where the body starts."""
    view = memoryview(value)
    if len(view) < len(MAGIC):
        raise TruncatedBatch(f"batch of {len(view)} bytes is shorter than its magic")
    if view[: len(MAGIC)] != MAGIC:
        raise BadMagic(f"not a rawcap batch: starts with {bytes(view[:4])!r}, expected {MAGIC!r}")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=1 << 20)
    unpacker.feed(view[len(MAGIC) : len(MAGIC) + (1 << 16)])
    try:
        raw = unpacker.unpack()
    except msgpack.OutOfData:
        raise TruncatedBatch("batch ends inside its msgpack header") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # TypeError: a map key msgpack cannot hash (an array or a map), e.g. b"\x81\x90\x00".
        raise TruncatedBatch(f"batch header is not valid msgpack: {exc}") from None
    if not isinstance(raw, dict):
        raise TruncatedBatch("batch header is not a msgpack map")
    version = raw.get("v")
    if not (isinstance(version, list) and len(version) == 2 and all(isinstance(x, int) for x in version)):
        raise TruncatedBatch(f"batch header has no valid format version: {version!r}")
    if version[0] != FORMAT_VERSION[0]:
        raise UnsupportedVersion(
            f"batch format version {version[0]}.{version[1]} is not supported "
            f"(this reader knows major version {FORMAT_VERSION[0]})"
        )
    try:
        header = BatchHeader(
            node=str(raw["node"]),
            seq=int(raw["seq"]),
            count=int(raw["n"]),
            first_ns=int(raw["t0"]),
            last_ns=int(raw["t1"]),
            ifaces={int(k): str(v) for k, v in dict(raw["ifaces"]).items()},
            linktype=int(raw["link"]),
            body=str(raw["body"]),
            codec=str(raw["codec"]),
            body_len=int(raw["blen"]),
            snaplen=int(raw.get("snap", 0)),
            version=(version[0], version[1]),
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf)
        raise TruncatedBatch(f"batch header is missing or mistypes a field: {exc}") from None
    return header, len(MAGIC) + unpacker.tell()


#: One decompression context per thread (a context is not thread-safe; making one per batch
#: costs more than inflating a small batch).
_local = threading.local()


def _inflate(body: bytes | memoryview, size: int) -> bytes | None:
    """One-shot zstd into a buffer of the promised ``size``: no chunk list to join, no second
    copy. ``None`` when that does not work out (any error, or a frame that does not end
    within ``size`` bytes), and the caller takes the streaming path, which says why."""
    if size <= 0:
        return None
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    try:
        return dctx.decompress(body, max_output_size=size)
    except zstandard.ZstdError:
        return None


def decompress_body(header: BatchHeader, body: bytes | memoryview) -> bytes | memoryview:
    """The batch body, inflated and size-checked (what ``decode_batch`` does before walking):
    readers that route by header first call this only for the batches they keep.

    A valid body is inflated in one shot (:func:`_inflate`, content checksum verified); any
    other goes through the streaming decoder, so that a corrupt batch is reported with the
    same reason whichever path met it first."""
    if not 0 <= header.body_len <= MAX_BODY_BYTES:
        raise CorruptBody(f"batch body length {header.body_len} is out of range")
    if header.codec == "none":
        raw: bytes | memoryview = body
    elif header.codec == "zstd":
        fast = _inflate(body, header.body_len)
        if fast is not None and len(fast) == header.body_len:
            return fast
        try:
            dobj = zstandard.ZstdDecompressor().decompressobj()
            raw = dobj.decompress(body)
            if not dobj.eof:
                raise CorruptBody("zstd body is truncated (frame does not end)")
        except zstandard.ZstdError as exc:
            raise CorruptBody(f"zstd body does not decompress: {exc}") from None
    else:
        raise CorruptBody(f"unknown body codec {header.codec!r}")
    if len(raw) != header.body_len:
        raise CorruptBody(f"body is {len(raw)} bytes, header promised {header.body_len}")
    return raw


def iter_packets(header: BatchHeader, raw_body: bytes | memoryview) -> Iterator[Packet]:
    """Walk a decompressed body; yields packets whose data are views into ``raw_body``."""
    view = memoryview(raw_body)
    if header.body == BODY_RECORDS:
        yield from _iter_records(view, header.count)
    elif header.body == BODY_TPACKET3:
        yield from _iter_blocks(view, header.count)
    else:
        raise CorruptBody(f"unknown body layout {header.body!r}")


def _iter_records(view: memoryview, count: int) -> Iterator[Packet]:
    pos, end, hsize, unpack = 0, len(view), REC_HEADER.size, REC_HEADER.unpack_from
    for i in range(count):
        if pos + hsize > end:
            raise RecordOverrun(f"record {i} header runs past the end of the body")
        ts, caplen, origlen, ifindex, pkttype = unpack(view, pos)
        pos += hsize
        if pos + caplen > end:
            raise RecordOverrun(f"record {i} ({caplen} bytes) runs past the end of the body")
        yield Packet(ts, caplen, origlen, ifindex, pkttype, view[pos : pos + caplen])
        pos += caplen
    if pos != end:
        raise RecordOverrun(f"{end - pos} bytes left after the last of {count} records")


def _iter_blocks(view: memoryview, count: int) -> Iterator[Packet]:
    pos, end, seen = 0, len(view), 0
    frame_unpack, sll_unpack = FRAME_HDR.unpack_from, SOCKADDR_LL.unpack_from
    while pos < end:
        if pos + BLOCK_DESC.size > end:
            raise RecordOverrun("TPACKET_V3 block descriptor runs past the end of the body")
        desc = BLOCK_DESC.unpack_from(view, pos)
        num, first_off, blk_len = desc[3], desc[4], desc[5]
        if blk_len < BLOCK_DESC.size or pos + blk_len > end:
            raise RecordOverrun(f"TPACKET_V3 block of {blk_len} bytes runs past the end of the body")
        block_end = pos + blk_len
        frame = pos + first_off
        for i in range(num):
            if frame + SOCKADDR_LL_OFFSET + SOCKADDR_LL.size > block_end:
                raise RecordOverrun(f"frame {i} header runs past the end of its block")
            (nxt, sec, nsec, snaplen, length, status, mac, _net, _h, tci, tpid, _p, _p2) = (
                frame_unpack(view, frame)
            )
            _fam, _proto, ifindex, _hatype, pkttype, _halen, _addr = sll_unpack(
                view, frame + SOCKADDR_LL_OFFSET
            )
            start = frame + mac
            if start + snaplen > block_end:
                raise RecordOverrun(f"frame {i} ({snaplen} bytes) runs past the end of its block")
            data: bytes | memoryview = view[start : start + snaplen]
            if status & TP_STATUS_VLAN_VALID and snaplen >= 12:
                # The kernel strips the 802.1Q tag into tp_vlan_tci; put it back where it was
                # on the wire, as libpcap does, so the bytes equal what tcpdump shows.
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100
                tag = struct.pack("!HH", tpid, tci & 0xFFFF)
                data = bytes(data[:12]) + tag + bytes(data[12:])
                snaplen += 4
                length += 4
            yield Packet(sec * 1_000_000_000 + nsec, snaplen, length, ifindex, pkttype, data)
            seen += 1
            if nxt == 0 and i + 1 < num:
                raise RecordOverrun(f"frame {i} has no successor but the block announces {num}")
            frame += nxt
        pos = block_end
    if seen != count:
        raise RecordOverrun(f"body holds {seen} packets, header announces {count}")


def decode_batch(value: bytes | memoryview) -> Batch:
    """Decode a whole batch; raises a :class:`schemas.errors.BatchError` subclass if invalid."""
    header, offset = decode_header(value)
    raw = decompress_body(header, memoryview(value)[offset:])
    return Batch(header, list(iter_packets(header, raw)))
