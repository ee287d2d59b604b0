"""DNS messages (RFC 1035), over UDP (one datagram) and TCP (length-prefixed stream).

Headers are declared as data (name, struct format) in dpkt's style; the struct and its size
derive from the table. Name decompression is guarded against hostile input: a compression
pointer must point strictly backwards from where the pointing label started, names are
capped at 255 bytes, and at most 128 labels/pointers are followed.
"""

from __future__ import annotations

import struct
from typing import Final

from .._errors import Malformed, Truncated
from .._sentinel import NEED_DATA, NeedData
from ._events import DnsMessage, Question
from ._state import State, step

__all__ = ("HEADER_FIELDS", "DnsTcpReader", "parse_message", "read_name")

#: The fixed 12-byte header (RFC 1035 4.1.1), declared once.
HEADER_FIELDS: Final = (
    ("id", "H"),
    ("flags", "H"),
    ("qdcount", "H"),
    ("ancount", "H"),
    ("nscount", "H"),
    ("arcount", "H"),
)
_HEADER = struct.Struct("!" + "".join(f for _, f in HEADER_FIELDS))
HEADER_LEN: Final = _HEADER.size
QUESTION_TAIL = struct.Struct("!HH")
MAX_NAME: Final = 255
MAX_HOPS: Final = 128
MAX_QUESTIONS: Final = 16


def read_name(buf: bytes, off: int) -> tuple[str, int]:
    """Decode the (possibly compressed) name at ``off``; return (name, offset after it)."""
    labels: list[str] = []
    total = 0
    end = -1
    floor = off  # pointers must land strictly before the lowest label start seen so far
    hops = 0
    n = len(buf)
    while True:
        if off >= n:
            raise Truncated("DNS name runs past the end of the message")
        length = buf[off]
        if length == 0:
            off += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if off + 1 >= n:
                raise Truncated("DNS compression pointer cut short")
            target = ((length & 0x3F) << 8) | buf[off + 1]
            if target >= floor:
                raise Malformed("DNS compression pointer does not point backwards")
            if end < 0:
                end = off + 2
            hops += 1
            if hops > MAX_HOPS:
                raise Malformed("DNS name has too many pointers")
            off = floor = target
            continue
        if kind:
            raise Malformed(f"DNS label type {kind:#x} not supported")
        if off + 1 + length > n:
            raise Truncated("DNS label runs past the end of the message")
        total += length + 1
        if total > MAX_NAME:
            raise Malformed("DNS name longer than 255 bytes")
        labels.append(buf[off + 1:off + 1 + length].decode("ascii", "backslashreplace"))
        off += 1 + length
    return ".".join(labels), (end if end >= 0 else off)


def parse_message(data: bytes, ts_ns: int = 0) -> DnsMessage:
    """Parse header and question section; count answers. Raises Truncated/Malformed."""
    if len(data) < HEADER_LEN:
        raise Truncated(f"DNS message of {len(data)} bytes is shorter than its header")
    ident, flags, qd, an, _ns, _ar = _HEADER.unpack_from(data, 0)
    if qd > MAX_QUESTIONS:
        raise Malformed(f"DNS message claims {qd} questions")
    off = HEADER_LEN
    questions = []
    for _ in range(qd):
        name, off = read_name(data, off)
        if off + 4 > len(data):
            raise Truncated("DNS question cut short")
        qtype, qclass = QUESTION_TAIL.unpack_from(data, off)
        off += 4
        questions.append(Question(name, qtype, qclass))
    return DnsMessage(ident, bool(flags & 0x8000), (flags >> 11) & 0xF, flags & 0xF, flags,
                      tuple(questions), an, len(data), ts_ns)


class DnsTcpReader:
    """One direction of DNS over TCP: ``feed``, then ``next_event()`` -> DnsMessage."""

    __slots__ = ("buf", "eof", "need", "state", "ts")

    def __init__(self) -> None:
        self.state = State.LENGTH
        self.buf = bytearray()
        self.need = 2
        self.ts = 0
        self.eof = False

    def feed(self, data: bytes, ts_ns: int = 0) -> None:
        if self.state is State.LENGTH or self.state is State.MESSAGE:
            self.ts = ts_ns
            self.buf += data
            if len(self.buf) > 70000:
                self.state = step(self.state, "malformed")
                self.buf.clear()

    def feed_gap(self, nbytes: int, ts_ns: int = 0) -> None:
        self.state = step(self.state, "gap")
        self.buf.clear()

    def feed_eof(self) -> None:
        self.eof = True

    def next_event(self) -> DnsMessage | NeedData:
        if self.state is State.ERROR:
            raise Malformed("DNS/TCP flow already failed")
        if self.state is State.RESYNC:
            return NEED_DATA
        buf = self.buf
        if self.state is State.LENGTH:
            if len(buf) < 2:
                if self.eof and buf:
                    raise Truncated("flow ended inside a DNS/TCP length prefix")
                return NEED_DATA
            self.need = (buf[0] << 8) | buf[1]
            del buf[:2]
            if self.need < HEADER_LEN:
                self.state = step(self.state, "malformed")
                raise Malformed(f"DNS/TCP message length {self.need} below header size")
            self.state = step(self.state, "length")
        if len(buf) < self.need:
            if self.eof:
                raise Truncated("flow ended inside a DNS/TCP message")
            return NEED_DATA
        msg = bytes(buf[:self.need])
        del buf[:self.need]
        self.state = step(self.state, "message")
        try:
            return parse_message(msg, self.ts)
        except (Truncated, Malformed):
            self.state = step(self.state, "malformed")
            raise
