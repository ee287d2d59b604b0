"""One batch = one Kafka record, handed to aiokafka already built.

aiokafka's generic path costs the shipper more than capture itself: its record builder
computes crc32c in software (0.5 ms per MiB) and copies the value in, then the Produce
request is assembled by nested ``bytes`` concatenations and joins, about eight more copies
of every MiB. A FIFO batch is always exactly one record, so it can be laid out here once:

- :class:`OneRecordBatch` stands in for aiokafka's ``BatchBuilder`` in
  ``AIOKafkaProducer.send_batch``. It builds the v2 record batch (magic 2) around the value
  without copying it, with a hardware crc32c over the pieces, once the producer has given it
  its idempotence state (producer id, epoch, base sequence);
- :class:`ProduceRequest` is aiokafka's own request class with one change: when every
  partition it carries is a :class:`OneRecordBatch`, its ``encode`` returns the pieces
  (:class:`_Pieces`) instead of bytes, and they are joined once, with the request header
  and size prefix that aiokafka's connection adds in front, into the buffer handed to the
  socket (a ``memoryview``). A plain one-block value comes in a ``Framed`` buffer with room
  in front, and the request is laid out there: no copy at all. The broker sees the same
  bytes either way
  (``tests/capture/test_produce.py`` compares what the connection writes with aiokafka's
  own encoding).

Everything else (idempotent sequence numbers, retries, acks, metadata, errors) stays
aiokafka's. :func:`install` swaps the request class into aiokafka's sender only if the
pieces it relies on are where this was written against; otherwise shipping keeps the
generic path (``send``), which is slower but the same on the wire.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from aiokafka.protocol import produce as _produce_mod

log = logging.getLogger("rawcap.kafka")

__all__ = ("Framed", "OneRecordBatch", "ProduceRequest", "crc32c", "install_produce_request")

try:  # SSE4.2 / ARMv8 crc32c; 10x aiokafka's software one
    from crc32c import crc32c as _hw_crc32c

    def crc32c(data: Any, value: int = 0) -> int:
        return int(_hw_crc32c(data, value))

    HARDWARE_CRC = True
except ImportError:  # pragma: no cover - crc32c is a declared dependency
    from aiokafka.record._crc32c import crc_update

    def crc32c(data: Any, value: int = 0) -> int:
        return int(crc_update(value ^ 0xFFFFFFFF, bytes(data)) ^ 0xFFFFFFFF)

    HARDWARE_CRC = False

#: RecordBatch fields before the crc: baseOffset, batchLength, partitionLeaderEpoch, magic, crc.
_HEAD = struct.Struct(">qiibI")
#: The crc-covered fixed part: attributes, lastOffsetDelta, baseTimestamp, maxTimestamp,
#: producerId, producerEpoch, baseSequence, record count.
_FIXED = struct.Struct(">hiqqqhii")
_HEAD_LEN = _HEAD.size + _FIXED.size  # 61
_NO_HEADERS = b"\x00"  # record header count 0, as a varint


def _varint(n: int) -> bytes:
    """Kafka's zig-zag varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


class Framed(bytearray):
    """A batch value with free room around it, so the Kafka request can be laid out in
    the same buffer (:func:`_in_place`) instead of copied: ``ROOM`` bytes before the
    value, one after. The value is ``self[start:end]``.

    Only a plain (incompressible) batch of one ring block is framed: there the value is
    the size of the block, and joining it into the request was the shipper's biggest
    copy. It is built with ``+=``, which copies without zero-filling the buffer first."""

    ROOM = 16 * 1024

    start: int
    end: int

    @classmethod
    def around(cls, block: memoryview) -> Framed:
        buf = cls()
        buf += bytes(cls.ROOM)
        buf += block
        buf.append(0)
        buf.start, buf.end = cls.ROOM, len(buf) - 1
        return buf

    def prepend(self, head: bytes) -> bool:
        """Put ``head`` right before the value (keeping half the room for Kafka)."""
        if len(head) > self.start - self.ROOM // 2:
            return False
        self.start -= len(head)
        self[self.start:self.start + len(head)] = head
        return True

    def value(self) -> memoryview:
        return memoryview(self)[self.start:self.end]


class OneRecordBatch:
    """A single-record v2 batch over ``parts`` (the value, possibly in pieces), duck-typing
    the ``BatchBuilder`` methods that aiokafka's accumulator and sender call."""

    def __init__(self, key: bytes, parts: list[Any], timestamp_ms: int) -> None:
        self.key = key
        self.parts = parts
        self.timestamp_ms = timestamp_ms
        self.value_len = sum(len(p) for p in parts)
        self._producer = (-1, -1, -1)
        self.chunks: list[Any] | None = None
        self.total = 0

    # --- the BatchBuilder surface aiokafka uses ---------------------------------------

    def close(self) -> None:
        pass  # nothing can be appended anyway

    def closed(self) -> bool:
        return True

    def record_count(self) -> int:
        return 1

    def size(self) -> int:
        return _HEAD_LEN + 16 + len(self.key) + self.value_len

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self._producer = (producer_id, producer_epoch, base_sequence)

    def _build(self) -> OneRecordBatch:
        """Lay the batch out (once: a retry must resend the very same bytes)."""
        if self.chunks is None:
            key, ts = self.key, self.timestamp_ms
            # attributes, timestampDelta, offsetDelta, key, value length (value follows).
            rec = b"\x00\x00\x00" + _varint(len(key)) + key + _varint(self.value_len)
            rec = _varint(len(rec) + self.value_len + len(_NO_HEADERS)) + rec
            fixed = _FIXED.pack(0, 0, ts, ts, *self._producer, 1)
            crc = crc32c(rec, crc32c(fixed))
            for part in self.parts:
                crc = crc32c(part, crc)
            crc = crc32c(_NO_HEADERS, crc)
            self.total = _HEAD_LEN + len(rec) + self.value_len + len(_NO_HEADERS)
            head = _HEAD.pack(0, self.total - 12, -1, 2, crc)
            self.chunks = [head, fixed, rec, *self.parts, _NO_HEADERS]
        return self

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, key: slice) -> bytes:
        return self.to_bytes()[key]  # aiokafka's debug logging shows value[:100]

    def to_bytes(self) -> bytes:
        """The batch as one ``bytes`` (for aiokafka's generic request path and tests)."""
        self._build()
        assert self.chunks is not None
        return b"".join(self.chunks)


_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")
_ACKS_TIMEOUT = struct.Struct(">hi")


def _string(s: str | None) -> bytes:
    if s is None:
        return _I16.pack(-1)
    b = s.encode()
    return _I16.pack(len(b)) + b


class ProduceRequest(_produce_mod.ProduceRequest):
    """aiokafka's ``ProduceRequest``; v3+ carrying only :class:`OneRecordBatch` values
    encodes in one join, anything else exactly as aiokafka does."""

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        st = super().prepare(versions)
        batches = [b for _, parts in self._topics for _, b in parts]
        if batches and all(isinstance(b, OneRecordBatch) for b in batches):
            if st.API_VERSION >= 3:
                st.encode = self._encode_v3
            else:  # pragma: no cover - Kafka 4 brokers only speak v3+
                st.topics = [(t, [(p, b.to_bytes()) for p, b in parts]) for t, parts in self._topics]
        return st

    def _encode_v3(self) -> _Pieces:
        """v3-v7 (same schema): transactional_id, acks, timeout, [topic, [partition, records]]."""
        out: list[Any] = [_string(self._transactional_id),
                          _ACKS_TIMEOUT.pack(self._required_acks, self._timeout),
                          _I32.pack(len(self._topics))]
        for topic, parts in self._topics:
            out += (_string(topic), _I32.pack(len(parts)))
            for partition, batch in parts:
                out += (_I32.pack(partition), _I32.pack(batch.total))
                out += batch.chunks
        return _Pieces(out)


class _Pieces:
    """An encoded request body not joined yet. aiokafka's connection does
    ``message = header.encode() + body`` and then ``write(size + message)``: ``bytes + x``
    falls back to ``x.__radd__``, so the header is prepended here without a copy, and when
    the 4-byte size arrives last the whole request is joined in one copy, which is what
    reaches the transport. Anything else added in front keeps the same exact bytes."""

    __slots__ = ("chunks", "headed", "length")

    def __init__(self, chunks: list[Any], headed: bool = False) -> None:
        self.chunks = chunks
        self.length = sum(len(c) for c in chunks)
        self.headed = headed

    def __len__(self) -> int:
        return self.length

    def __radd__(self, prefix: bytes) -> _Pieces | memoryview:
        if self.headed and len(prefix) == 4 and _I32.unpack(prefix)[0] == self.length:
            # The size prefix: the request is complete. A memoryview, so that when the
            # socket takes only part of it the transport slices the rest without a copy.
            chunks = [prefix, *self.chunks]
            return _in_place(chunks) or memoryview(b"".join(chunks))
        return _Pieces([prefix, *self.chunks], headed=True)

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks)


def _in_place(chunks: list[Any]) -> memoryview | None:
    """The request laid out inside the value's own buffer, when the value is a
    :class:`Framed` one followed only by the record's trailer: the small
    pieces before it go into the room in front, and nothing of the value is copied.

    Rewriting the room is safe because a batch is in one request at a time: a retry only
    follows the end of the previous attempt (an error response, or a closed connection
    whose transport dropped what it had queued)."""
    value = chunks[-2] if len(chunks) >= 2 else None
    if not (isinstance(value, memoryview) and isinstance(value.obj, Framed)
            and chunks[-1] == _NO_HEADERS):
        return None
    buf = value.obj
    if len(value) != buf.end - buf.start:
        return None  # not the framed value itself (a slice of it)
    head = b"".join(chunks[:-2])
    if len(head) > buf.start:
        return None
    first = buf.start - len(head)
    buf[first:buf.start] = head
    buf[buf.end] = 0  # _NO_HEADERS
    return memoryview(buf)[first:buf.end + 1]


_installed: bool | None = None


def install_produce_request() -> bool:
    """Put :class:`ProduceRequest` into aiokafka's sender; False (generic path) if this
    aiokafka does not look like the one it was written against."""
    global _installed
    if _installed is not None:
        return _installed
    try:
        from aiokafka.producer import message_accumulator, sender

        ok = (sender.ProduceRequest is _produce_mod.ProduceRequest
              and hasattr(sender.SendProduceReqHandler, "create_request")
              and hasattr(message_accumulator.MessageBatch, "get_data_buffer")
              and max(c.API_VERSION for c in _produce_mod.ProduceRequest._CLASSES) <= 8)
        if ok:
            sender.ProduceRequest = ProduceRequest
    except (ImportError, AttributeError):
        ok = False
    if not ok:
        log.warning("aiokafka internals changed; shipping uses the generic (slower) produce path")
    _installed = ok
    return ok
