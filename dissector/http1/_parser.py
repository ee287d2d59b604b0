"""Sans-I/O HTTP/1.x reader for one direction of a connection (h11-style).

``feed(data, ts_ns)`` buffers; ``next_event()`` returns ``Request``/``Response``,
``EndOfMessage``, ``Resync`` or ``NEED_DATA``. ``feed_gap(n)`` says ``n`` bytes were lost
(0: unknown, e.g. joined mid-stream): inside a Content-Length body the parser just counts
them and stays in sync; anywhere else it scans for the next start line. Keep-alive and
pipelining fall out of the loop: after a message the parser is ``IDLE`` again. A response
reader must be told each request's method (``expect(method)``) to frame HEAD/CONNECT
replies.

``PyHTTP1Reader`` is the reference; ``HTTP1Reader`` is its compiled twin
(``dissector/http1/_chttp1.c``: same events, state, errors and attributes) when it is built,
else the reference itself (the test hook ``no-ctwins`` picks the reference too).
"""

from __future__ import annotations

import importlib
import re
from collections import deque
from typing import Final, cast

from .._errors import Malformed, Truncated
from .._sentinel import NEED_DATA, NeedData
from ._events import EndOfMessage, Request, Response, Resync, new_end, new_request, new_response
from ._head import COMPILED, parse_head
from ._state import TRANSITIONS as _T
from ._state import State

__all__ = ("CLIENT", "METHODS", "SERVER", "HTTP1Reader", "PyHTTP1Reader")

CLIENT: Final = "client"  # reads requests
SERVER: Final = "server"  # reads responses

METHODS: Final = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                  b"CONNECT", b"TRACE")
MAX_HEAD: Final = 64 * 1024
MAX_LINE: Final = 4096
_REQ_START = re.compile(
    rb"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) [^ \r\n]+ HTTP/1\.[01]\r\n")
_RESP_START = re.compile(rb"HTTP/1\.[01] [1-9][0-9][0-9][ \r]")

Event = Request | Response | EndOfMessage | Resync | NeedData


class PyHTTP1Reader:
    __slots__ = (
        "_lost_pending",
        "body",
        "body_len",
        "body_trunc",
        "buf",
        "end_ready",
        "eof",
        "last_status",
        "max_body",
        "methods",
        "remaining",
        "role",
        "state",
        "ts",
    )

    def __init__(self, role: str, *, max_body: int = 65536) -> None:
        if role not in (CLIENT, SERVER):
            raise ValueError(f"role must be {CLIENT!r} or {SERVER!r}")
        self.role = role
        self.state = State.IDLE
        self.buf = bytearray()
        self.ts = 0
        self.max_body = max_body
        self.remaining = 0
        self.body_len = 0
        self.body = bytearray()
        self.body_trunc = False
        self.methods: deque[str] = deque()
        self.eof = False
        self._lost_pending: Resync | None = None
        self.last_status = 0
        self.end_ready = False

    # --- input -----------------------------------------------------------------------------
    def feed(self, data: bytes, ts_ns: int = 0) -> None:
        st = self.state
        self.ts = ts_ns
        if st is State.BODY_LENGTH and not self.buf and len(data) <= self.remaining:
            # Hot path: a body segment is counted (and kept up to the cap), never buffered.
            self.remaining -= len(data)
            self.body_len += len(data)
            room = self.max_body - len(self.body)
            if room > 0:
                self.body += data[:room]
            if len(data) > room:
                self.body_trunc = True
            return
        if st is State.ERROR or st is State.SWITCHED:
            return
        self.buf += data

    def feed_gap(self, nbytes: int, ts_ns: int = 0) -> None:
        self.ts = ts_ns
        st = self.state
        if st is State.ERROR or st is State.SWITCHED:
            return
        if nbytes and (
                (st is State.BODY_LENGTH and len(self.buf) + nbytes < self.remaining)
                or st is State.BODY_EOF):
            # Lost bytes inside a body of known extent: count them, stay in sync.
            self.state = _T[(st, "gap-in-body")]
            if self.buf:
                self._keep(self.buf)
                self.remaining -= len(self.buf) if st is State.BODY_LENGTH else 0
                self.buf.clear()
            if st is State.BODY_LENGTH:
                self.remaining -= nbytes
            self.body_len += nbytes
            self.body_trunc = True
            return
        in_message = (st is not State.IDLE and st is not State.RESYNC) or bool(self.buf)
        self.state = _T[(st, "gap")]
        self.buf.clear()
        self.end_ready = False
        self._lost_pending = Resync(ts_ns, in_message)

    def feed_eof(self) -> None:
        self.eof = True

    def expect(self, method: str) -> None:
        """Response framing depends on the request method (HEAD, CONNECT)."""
        self.methods.append(method)

    # --- output ----------------------------------------------------------------------------
    def next_event(self) -> Event:
        """One event, or ``NEED_DATA``; raises ``Malformed`` (poisoned) or ``Truncated``."""
        if self._lost_pending is not None:
            ev, self._lost_pending = self._lost_pending, None
            return ev
        if self.end_ready:
            self.end_ready = False
            return new_end(0, b"", False, self.ts)
        st = self.state
        if st is State.IDLE:
            return self._head() if self.buf else NEED_DATA
        if st is State.BODY_LENGTH:
            return self._body_length()
        if st is State.CHUNK_SIZE or st is State.CHUNK_DATA or st is State.TRAILERS:
            return self._chunked()
        if st is State.BODY_EOF:
            return self._body_eof()
        if st is State.RESYNC:
            return self._resync()
        if st is State.ERROR:
            raise Malformed("HTTP/1 flow already failed")
        return NEED_DATA  # SWITCHED

    def _fail(self, msg: str) -> Malformed:
        self.state = _T[(self.state, "malformed")]
        self.buf.clear()
        return Malformed(msg)

    def _resync(self) -> Event:
        pat = _REQ_START if self.role == CLIENT else _RESP_START
        m = pat.search(self.buf)
        if m is None:
            # Keep a tail that could be the start of a start line.
            if len(self.buf) > 64:
                del self.buf[:-64]
            if self.eof:
                self.buf.clear()
            return NEED_DATA
        del self.buf[:m.start()]
        self.state = _T[(self.state, "found")]
        return self._head()

    def _head(self) -> Event:
        buf = self.buf
        if not buf:
            return NEED_DATA
        # Tolerate stray CRLFs between messages (RFC 9112 2.2).
        while buf.startswith(b"\r\n"):
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise self._fail("HTTP/1 head larger than 64 KiB")
            if self.eof and buf:
                n = len(buf)
                buf.clear()
                raise Truncated(f"flow ended inside an HTTP/1 head ({n} bytes)")
            if buf and not (buf[:1].isalpha()):
                raise self._fail("HTTP/1 start line does not start with a letter")
            return NEED_DATA
        is_request = self.role == CLIENT
        head = parse_head(buf, end, is_request)
        if type(head) is str:
            raise self._fail(head)
        del buf[:end + 4]
        first, second, version, hdrs, length, chunked = head
        head_bytes = end + 4
        self.body_len = 0
        if self.body:
            self.body = bytearray()
        self.body_trunc = False
        if is_request:
            ev: Request | Response = new_request(first, second, version, hdrs, self.ts,
                                                 head_bytes)
            if chunked:
                what = "head-chunked"
            elif length:
                what = "head-length"
            else:
                what = "head-no-body"
            if first == "CONNECT":
                what = "head-no-body"
        else:
            status = first
            ev = new_response(status, second, version, hdrs, self.ts, head_bytes)
            self.last_status = status
            if 100 <= status < 200:
                what = "switch" if status == 101 else "head-no-body"
                if status == 101 and self.methods:
                    self.methods.popleft()
                self.state = _T[(self.state, what)]
                return ev
            method = self.methods.popleft() if self.methods else ""
            if method == "HEAD" or status == 204 or status == 304:
                what = "head-no-body"
            elif method == "CONNECT" and 200 <= status < 300:
                what = "switch"
            elif chunked:
                what = "head-chunked"
            elif length is not None:
                what = "head-length" if length else "head-no-body"
            else:
                what = "head-eof"
        self.state = _T[(self.state, what)]
        self.remaining = length or 0
        if what == "head-no-body":
            self.end_ready = True
        return ev

    def _keep_prefix(self, data: bytes) -> None:
        """Keep what fits of a body chunk already counted in ``body_len``."""
        room = self.max_body - len(self.body)
        self.body += data[:room]
        if len(data) > room:
            self.body_trunc = True

    def _keep(self, chunk: bytes | bytearray) -> None:
        self.body_len += len(chunk)
        room = self.max_body - len(self.body)
        if room > 0:
            self.body += chunk[:room]
        if len(chunk) > room:
            self.body_trunc = True

    def _end(self, what: str) -> EndOfMessage:
        self.state = _T[(self.state, what)]
        body = self.body
        if body:
            ev = new_end(self.body_len, bytes(body), self.body_trunc, self.ts)
            self.body = bytearray()
        else:
            ev = new_end(self.body_len, b"", self.body_trunc, self.ts)
        return ev

    def _body_length(self) -> Event:
        buf = self.buf
        if buf:
            take = min(self.remaining, len(buf))
            if take == len(buf) and not self.body and take <= self.max_body:
                # The whole (rest of the) body arrived with the head: keep it as is.
                self.body_len += take
                self.body = buf
                self.buf = bytearray()
            else:
                self._keep(buf[:take])
                del buf[:take]
            self.remaining -= take
        if self.remaining == 0:
            return self._end("body-done")
        if self.eof:
            raise Truncated(f"flow ended {self.remaining} bytes before the end of a body")
        return NEED_DATA

    def _body_eof(self) -> Event:
        if self.buf:
            self._keep(self.buf)
            self.buf.clear()
        if self.eof:
            return self._end("eof")
        return NEED_DATA

    def _chunked(self) -> Event:
        buf = self.buf
        while True:
            st = self.state
            if st is State.CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > MAX_LINE:
                        raise self._fail("chunk size line too long")
                    break
                line = bytes(buf[:i]).split(b";", 1)[0].strip()
                del buf[:i + 2]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise self._fail(f"bad chunk size {line[:20]!r}") from None
                if size < 0:
                    raise self._fail("negative chunk size")
                if size == 0:
                    self.state = _T[(st, "last-chunk")]
                else:
                    self.remaining = size
                    self.state = _T[(st, "chunk")]
            elif st is State.CHUNK_DATA:
                if self.remaining:
                    take = min(self.remaining, len(buf))
                    if take:
                        self._keep(buf[:take])
                        del buf[:take]
                        self.remaining -= take
                    if self.remaining:
                        break
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise self._fail("chunk data not followed by CRLF")
                del buf[:2]
                self.state = _T[(st, "chunk-done")]
            else:  # TRAILERS
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    return self._end("trailers-done")
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD:
                        raise self._fail("trailer section too large")
                    break
                del buf[:i + 4]
                return self._end("trailers-done")
        if self.eof:
            raise Truncated("flow ended inside a chunked body")
        return NEED_DATA


def _compiled() -> type[PyHTTP1Reader] | None:
    if not COMPILED:
        return None
    _chttp1 = importlib.import_module("dissector.http1._chttp1")  # C: no import of the package
    _chttp1.setup(Request, Response, EndOfMessage, Resync, Malformed, Truncated, NEED_DATA,
                  tuple(State), _REQ_START, _RESP_START, CLIENT, SERVER)
    return cast(type[PyHTTP1Reader], _chttp1.HTTP1Reader)


HTTP1Reader: type[PyHTTP1Reader] = _compiled() or PyHTTP1Reader
