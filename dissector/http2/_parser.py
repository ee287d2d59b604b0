"""Sans-I/O HTTP/2 reader for one direction: frame splitter + HPACK (``hpack`` library).

``split_frames(buf)`` returns ``(frames, consumed)`` and never copies the tail; the reader
keeps the unconsumed bytes for the next ``feed``. HEADERS/CONTINUATION fragments are joined
(padding and priority stripped) and decoded with the direction's own HPACK decoder, so the
dynamic table follows the real connection. Any lost byte ends the flow for this parser: a
header block cannot be decoded without the table state that the lost bytes changed.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import hpack
from hpack.exceptions import HPACKError

from .._errors import Malformed, Truncated
from .._sentinel import NEED_DATA, NeedData
from ._events import Frame, GoAway, Headers, StreamData, StreamReset
from ._state import State, step

__all__ = ("PREFACE", "HTTP2Reader", "split_frames")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME: Final = 1 << 20
MAX_HEADER_BLOCK: Final = 256 * 1024

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20

Event = Headers | StreamData | StreamReset | GoAway | NeedData


def split_frames(buf: bytes | bytearray | memoryview, max_frame: int = MAX_FRAME,
                 ) -> tuple[list[Frame], int]:
    """Split whole frames off ``buf``; return them and the number of bytes they used."""
    frames = []
    off = 0
    n = len(buf)
    while n - off >= 9:
        length = (buf[off] << 16) | (buf[off + 1] << 8) | buf[off + 2]
        if length > max_frame:
            raise Malformed(f"HTTP/2 frame of {length} bytes exceeds {max_frame}")
        if n - off - 9 < length:
            break
        sid = int.from_bytes(buf[off + 5:off + 9], "big") & 0x7FFFFFFF
        frames.append(Frame(length, buf[off + 3], buf[off + 4], sid,
                            bytes(buf[off + 9:off + 9 + length])))
        off += 9 + length
    return frames, off


def _strip(frame: Frame) -> bytes:
    """Header-block fragment of a HEADERS frame without padding and priority fields."""
    p = frame.payload
    start, end = 0, len(p)
    if frame.flags & PADDED:
        if not p:
            raise Malformed("PADDED frame without pad length")
        start = 1
        end -= p[0]
    if frame.flags & PRIORITY_FLAG:
        start += 5
    if end < start:
        raise Malformed("HTTP/2 padding longer than the frame")
    return p[start:end]


class HTTP2Reader:
    __slots__ = (
        "block",
        "block_end_stream",
        "block_sid",
        "buf",
        "decoder",
        "eof",
        "events",
        "is_client",
        "state",
        "ts",
    )

    def __init__(self, *, client: bool) -> None:
        self.is_client = client
        self.state = State.PREFACE if client else State.FRAMES
        self.buf = bytearray()
        self.ts = 0
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.decoder.max_header_list_size = MAX_HEADER_BLOCK
        self.events: deque[Event] = deque()
        self.block = bytearray()
        self.block_sid = 0
        self.block_end_stream = False
        self.eof = False

    def feed(self, data: bytes, ts_ns: int = 0) -> None:
        if self.state is not State.ERROR:
            self.ts = ts_ns
            self.buf += data

    def feed_gap(self, nbytes: int, ts_ns: int = 0) -> None:
        self.state = step(self.state, "gap")
        self.buf.clear()

    def feed_eof(self) -> None:
        self.eof = True

    def _fail(self, msg: str) -> Malformed:
        self.state = step(self.state, "malformed")
        self.buf.clear()
        return Malformed(msg)

    def next_event(self) -> Event:
        if self.events:
            return self.events.popleft()
        if self.state is State.ERROR:
            raise Malformed("HTTP/2 flow already failed")
        if self.state is State.PREFACE:
            if len(self.buf) < len(PREFACE):
                if self.buf and not PREFACE.startswith(bytes(self.buf)):
                    raise self._fail("client did not send the HTTP/2 preface")
                return NEED_DATA
            if self.buf[:len(PREFACE)] != PREFACE:
                raise self._fail("client did not send the HTTP/2 preface")
            del self.buf[:len(PREFACE)]
            self.state = step(self.state, "preface")
        try:
            frames, used = split_frames(self.buf)
        except Malformed:
            self.state = step(self.state, "malformed")
            raise
        del self.buf[:used]
        for f in frames:
            self._frame(f)
        if self.events:
            return self.events.popleft()
        if self.eof and self.buf:
            raise Truncated(f"flow ended inside an HTTP/2 frame ({len(self.buf)} bytes)")
        return NEED_DATA

    def _frame(self, f: Frame) -> None:
        st = self.state
        if st is State.CONTINUATION:
            if f.type != CONTINUATION or f.stream_id != self.block_sid:
                raise self._fail("HTTP/2 header block interrupted")
            self.block += f.payload
            if len(self.block) > MAX_HEADER_BLOCK:
                raise self._fail("HTTP/2 header block too large")
            if f.flags & END_HEADERS:
                self.state = step(st, "headers-close")
                self._decode_block()
            return
        t = f.type
        if t == DATA:
            if f.stream_id == 0:
                raise self._fail("DATA on stream 0")
            self.events.append(StreamData(f.stream_id, f.length, bool(f.flags & END_STREAM),
                                          self.ts))
        elif t == HEADERS:
            if f.stream_id == 0:
                raise self._fail("HEADERS on stream 0")
            self.block = bytearray(_strip(f))
            self.block_sid = f.stream_id
            self.block_end_stream = bool(f.flags & END_STREAM)
            if f.flags & END_HEADERS:
                self._decode_block()
            else:
                self.state = step(st, "headers-open")
        elif t == PUSH_PROMISE:
            # Decode to keep HPACK state right; the promised request itself is not a call.
            frag = _strip(Frame(f.length, f.type, f.flags & PADDED, f.stream_id, f.payload))
            self.block = bytearray(frag[4:])
            self.block_sid = f.stream_id
            if f.flags & END_HEADERS:
                self._decode_block(emit=False)
            else:
                self.state = step(st, "headers-open")
        elif t == RST_STREAM:
            if len(f.payload) != 4:
                raise self._fail("RST_STREAM payload is not 4 bytes")
            self.events.append(StreamReset(f.stream_id, int.from_bytes(f.payload, "big"),
                                           self.ts))
        elif t == GOAWAY:
            if len(f.payload) < 8:
                raise self._fail("GOAWAY payload too short")
            self.events.append(GoAway(int.from_bytes(f.payload[:4], "big") & 0x7FFFFFFF,
                                      int.from_bytes(f.payload[4:8], "big"), self.ts))
        elif t == CONTINUATION:
            raise self._fail("CONTINUATION without an open header block")
        self.state = step(self.state, "frame") if self.state is State.FRAMES else self.state

    def _decode_block(self, emit: bool = True) -> None:
        try:
            headers = self.decoder.decode(bytes(self.block), raw=True)
        except (HPACKError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise self._fail(f"HPACK: {type(exc).__name__}") from None
        size = len(self.block)
        self.block = bytearray()
        if emit:
            hdrs = tuple((bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                         for k, v in headers)
            self.events.append(Headers(self.block_sid, hdrs, self.block_end_stream, self.ts,
                                       size))
