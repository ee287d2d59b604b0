"""Ring blocks -> ``tpacket3`` batches, compressed straight from the ring.

A batch may span several ring blocks (a quiet link retires a small block every
``blockTimeout``; shipping each as its own message would waste Kafka and disk on headers).
The batch closes when its raw body reaches ``capture.batch.maxBytes`` or
``capture.batch.maxDelay`` after its first block.

A block that fills a batch on its own (the busy case) is compressed in one shot straight
from the mmap ring and released. Smaller blocks are copied into one reusable buffer
(released at once, never held in the ring) and compressed in one shot when the batch closes:
a memcpy costs much less than what zstd's streaming mode adds over one-shot compression (its
window copy and slower cross-input matching; docs/capture.md). No block becomes a fresh
``bytes`` object (DESIGN.md: copying blocks into new objects and holding them costs more than
compressing from the view).

The output is byte-compatible with :func:`schemas.encode_block_batch`: ``MAGIC``, the
msgpack header, one zstd frame over the concatenated blocks (each trimmed to ``blk_len``).

Incompressible traffic (TLS, already-compressed payloads) costs zstd CPU for nothing, most
of the agent's at high rates. So compression adapts: when a batch shrinks by less than
``_WORTH`` the next ``_PLAIN_BATCHES`` batches are stored with codec ``none`` (a plain copy
out of the ring, far cheaper), then one batch probes zstd again. With ``codec="none"``
(``capture.codec: none``) every batch is stored that way and zstd never runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zstandard

from rawcap.kafka import Framed
from schemas import BODY_TPACKET3, BatchHeader, block_summary, encode_header
from schemas.tpacket import BLOCK_DESC_FIELDS, FRAME_HDR_FIELDS, fields_view

__all__ = ("CODECS", "BlockBatcher", "ClosedBatch", "Piece")

#: Values of ``capture.codec``: ``zstd`` (adaptive, see above) or ``none`` (never compress).
CODECS = ("zstd", "none")

#: A piece of a batch's wire bytes: ``bytes``, or a view into a :class:`Framed` buffer.
Piece = bytes | memoryview

_WORTH = 0.9  # compressed / raw above this: not worth compressing
_PLAIN_BATCHES = 32
_FIRST_OFF = fields_view(BLOCK_DESC_FIELDS, ("offset_to_first_pkt",))
_FRAME_TS = fields_view(FRAME_HDR_FIELDS, ("tp_sec", "tp_nsec"))


@dataclass(frozen=True, slots=True)
class ClosedBatch:
    """One finished batch, ready for the FIFO: its sequence, counts and wire bytes.

    The bytes stay in ``parts`` (header, then each block's copy or zstd output; or the one
    ``Framed`` value) and are never joined: the FIFO writes them with one ``writev`` and the
    shipper lays them into the Kafka request, so the body is copied out of the ring once
    and not again in Python."""

    seq: int
    count: int
    first_ns: int
    last_ns: int
    raw_bytes: int
    parts: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def value(self) -> bytes:
        """The wire bytes in one piece (a copy: for tests and tools, not the hot path)."""
        return b"".join(self.parts)


class BlockBatcher:
    """Accumulates retired ring blocks into batches; not thread-safe (one ring thread)."""

    def __init__(self, *, node: str, next_seq: int, ifaces: Callable[[], dict[int, str]],
                 max_bytes: int, max_delay: float, level: int, snaplen: int = 0,
                 codec: str = "zstd", clock: Callable[[], float] = time.monotonic) -> None:
        if codec not in CODECS:
            raise ValueError(f"batch codec must be one of {', '.join(CODECS)}, not {codec!r}")
        self.node, self.next_seq = node, next_seq
        self.codec = codec
        self._ifaces = ifaces
        self.max_bytes, self.max_delay = max_bytes, max_delay
        self.snaplen = snaplen
        # Probe the codec now: a bad level fails at start, not on the first packet.
        self._zc = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._clock = clock
        self._plain_left = 0
        self.plain_batches = 0
        # Blocks of a batch that spans several, until it closes: never more than max_bytes
        # (a block that would overflow closes the batch first). Allocated on first use.
        self._acc = bytearray()
        self._acc_len = 0
        self._reset()

    def _reset(self) -> None:
        self._acc_len = 0
        self._plain = False
        self._parts: list[bytes | Framed] = []
        self._count = self._raw = 0
        self._first = self._last = 0
        self._opened = 0.0

    @property
    def pending(self) -> bool:
        return self._count > 0

    def add_block(self, block: memoryview) -> list[ClosedBatch]:
        """Compress one retired block into a batch; returns the batches that closed.

        A block that would take the open batch past ``max_bytes`` closes it first, so a
        body never exceeds ``max(max_bytes, block size)`` and always fits the topic's
        ``max.message.bytes`` (``rawcap.config`` checks the two sizes against it)."""
        num, _open_ns, t1, blk_len = block_summary(block)
        if num == 0:
            return []
        closed = []
        if self._count and self._raw + blk_len > self.max_bytes:
            closed.append(self._close())
        # The descriptor's "first" time is when the block was opened; the first frame's own
        # timestamp is the first packet's time, which is what the header promises.
        first_off = _FIRST_OFF.unpack_from(block)[0]
        sec, nsec = _FRAME_TS.unpack_from(block, first_off)
        t0 = sec * 1_000_000_000 + nsec
        # A block that alone (nearly) fills a batch is the batch, compressed from the ring.
        alone = self._count == 0 and blk_len >= self.max_bytes - (self.max_bytes >> 3)
        if self._count == 0:
            self._plain = self.codec == "none" or self._plain_left > 0
            self._opened = self._clock()
            self._first = t0
        used = block[:blk_len]
        try:
            if self._plain and alone:
                self._parts.append(Framed.around(used))
            elif self._plain:
                self._parts.append(bytes(used))
            elif alone:
                self._parts.append(self._zc.compress(used))
            else:
                self._gather(used)
        finally:
            used.release()
        self._first = min(self._first, t0)
        self._last = max(self._last, t1)
        self._count += num
        self._raw += blk_len
        if alone or self._raw >= self.max_bytes:
            closed.append(self._close())
        return closed

    def _gather(self, used: memoryview) -> None:
        end = self._acc_len + len(used)
        if len(self._acc) < end:
            self._acc.extend(bytes(max(end, self.max_bytes) - len(self._acc)))
        self._acc[self._acc_len:end] = used
        self._acc_len = end

    def due(self) -> bool:
        """True when the open batch has waited ``maxDelay`` since its first block."""
        return self._count > 0 and self._clock() - self._opened >= self.max_delay

    def close(self) -> ClosedBatch | None:
        """Close the open batch (at ``max_delay`` or shutdown); None if nothing is open."""
        return self._close() if self._count else None

    def _close(self) -> ClosedBatch:
        if self._plain:
            self._plain_left = max(0, self._plain_left - 1)
            self.plain_batches += 1
        else:
            if self._acc_len:  # gathered from several blocks; a lone block is done
                with memoryview(self._acc) as acc, acc[:self._acc_len] as body:
                    self._parts.append(self._zc.compress(body))
            if sum(len(p) for p in self._parts) > _WORTH * self._raw:
                self._plain_left = _PLAIN_BATCHES
        header = BatchHeader(
            node=self.node, seq=self.next_seq, count=self._count, first_ns=self._first,
            last_ns=self._last, ifaces=self._ifaces(), body=BODY_TPACKET3,
            codec="none" if self._plain else "zstd", body_len=self._raw, snaplen=self.snaplen,
        )
        head = encode_header(header)
        parts = self._parts
        wire: tuple[Any, ...]
        if len(parts) == 1 and isinstance(parts[0], Framed):
            framed = parts[0]  # a huge header (thousands of interfaces) goes in front instead
            wire = (framed.value(),) if framed.prepend(head) else (head, framed.value())
        else:
            wire = (head, *parts)
        batch = ClosedBatch(self.next_seq, self._count, self._first, self._last, self._raw, wire)
        self.next_seq += 1
        self._reset()
        return batch
