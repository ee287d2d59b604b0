"""Sans-I/O Redis RESP2/RESP3 reader for one direction.

A value is parsed only once all its bytes are buffered (``_scan`` returns the end offset or
-1), so a partial value costs a rescan but never a wrong event. Nesting depth, element
counts and bulk lengths are capped.
"""

from __future__ import annotations

from typing import Final

from .._errors import Malformed, Truncated
from .._sentinel import NEED_DATA, NeedData
from ._events import Command, Reply
from ._state import State, step

__all__ = ("RespReader", "looks_like_resp")

MAX_DEPTH: Final = 16
MAX_ELEMENTS: Final = 1 << 20
MAX_BULK: Final = 512 * 1024 * 1024
_LINE_TYPES: Final = frozenset(b"+-:_,#(")  # simple line values (RESP2 + RESP3)
_BULK_TYPES: Final = frozenset(b"$!=")
_AGG_TYPES: Final = frozenset(b"*~>%|")


def looks_like_resp(data: bytes) -> bool:
    return len(data) >= 4 and data[0] == 0x2A and data[1:2].isdigit()


class RespReader:
    __slots__ = ("buf", "client", "eof", "state", "ts")

    def __init__(self, *, client: bool) -> None:
        self.client = client
        self.state = State.VALUE
        self.buf = bytearray()
        self.ts = 0
        self.eof = False

    def feed(self, data: bytes, ts_ns: int = 0) -> None:
        if self.state is State.VALUE:
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

    def _line(self, off: int) -> tuple[bytes, int]:
        i = self.buf.find(b"\r\n", off)
        if i < 0:
            if len(self.buf) - off > 65536:
                raise self._fail("RESP line too long")
            return b"", -1
        return bytes(self.buf[off:i]), i + 2

    def _int(self, raw: bytes) -> int:
        try:
            return int(raw)
        except ValueError:
            raise self._fail(f"bad RESP length {raw[:20]!r}") from None

    def _scan(self, off: int, depth: int, items: list[bytes] | None) -> int:
        buf = self.buf
        if off >= len(buf):
            return -1
        t = buf[off]
        line, nxt = self._line(off + 1)
        if nxt < 0:
            return -1
        if t in _LINE_TYPES:
            if items is not None:
                items.append(line)
            return nxt
        if t in _BULK_TYPES:
            n = self._int(line)
            if n < 0:
                return nxt
            if n > MAX_BULK:
                raise self._fail("RESP bulk string too large")
            if len(buf) < nxt + n + 2:
                return -1
            if items is not None:
                items.append(bytes(buf[nxt:nxt + min(n, 256)]))
            return nxt + n + 2
        if t in _AGG_TYPES:
            n = self._int(line)
            if n < 0:
                return nxt
            if n > MAX_ELEMENTS:
                raise self._fail("RESP aggregate too large")
            if depth >= MAX_DEPTH:
                raise self._fail("RESP nesting too deep")
            if t == 0x25 or t == 0x7C:  # map / attribute: key + value per entry
                n *= 2
            for _ in range(n):
                nxt = self._scan(nxt, depth + 1, items if depth == 0 else None)
                if nxt < 0:
                    return -1
            return nxt
        if self.client and depth == 0 and t not in _AGG_TYPES:
            # Inline command (telnet style): one line of words.
            if items is not None:
                items.extend(bytes([t]).__add__(line).split())
            return nxt
        raise self._fail(f"unknown RESP type byte {t:#x}")

    def next_event(self) -> Command | Reply | NeedData:
        if self.state is State.ERROR:
            raise Malformed("RESP flow already failed")
        if self.state is State.RESYNC or not self.buf:
            return NEED_DATA
        items: list[bytes] = []
        end = self._scan(0, 0, items)
        if end < 0:
            if self.eof:
                raise Truncated("flow ended inside a RESP value")
            return NEED_DATA
        t = self.buf[0]
        del self.buf[:end]
        self.state = step(self.state, "value")
        if self.client:
            name = items[0].decode("latin-1").upper() if items else ""
            key = items[1].decode("latin-1", "replace")[:128] if len(items) > 1 else ""
            return Command(name, max(len(items) - 1, 0), key, end, self.ts)
        err = items[0].decode("latin-1")[:200] if t == 0x2D and items else ""
        return Reply(chr(t), err, end, self.ts)
