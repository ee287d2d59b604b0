"""Sans-I/O PostgreSQL v3 reader for one direction (simple and extended query protocol).

Client: an untyped first message (StartupMessage, SSLRequest, CancelRequest), then typed
messages ``type | int32 length | payload``: ``Q`` (simple query) and ``E`` (Execute, its SQL
from the Parse and Bind it names) become ``Query`` events, ``S`` a ``Sync``, CopyDone/CopyFail
a ``CopyIn``. Server: ``C`` CommandComplete, ``E`` ErrorResponse (SQLSTATE, message,
position), ``I`` EmptyQueryResponse, ``s`` PortalSuspended, ``Z`` ReadyForQuery; the other
messages are counted (bytes, DataRows) into the next of those events and never buffered
whole, so a large row or COPY stream costs no memory. After an SSLRequest the server answers
one byte: ``S`` means TLS follows and the flow is opaque from there. Messages are capped at
16 MiB.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from .._errors import Malformed, Truncated
from .._sentinel import NEED_DATA, NeedData
from ._events import (
    CommandComplete,
    CopyIn,
    EmptyQuery,
    ErrorResponse,
    PortalSuspended,
    Query,
    ReadyForQuery,
    SslRequest,
    Startup,
    Sync,
)
from ._state import State, step

__all__ = ("PROTOCOL_3", "SSL_REQUEST_CODE", "PgReader", "looks_like_startup")

PROTOCOL_3: Final = 196608
SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102
MAX_MESSAGE: Final = 16 << 20
_I32 = struct.Struct("!i").unpack_from
_CLIENT_TYPES: Final = frozenset(b"QPBEDCSHXpFfdcG")
_SERVER_TYPES: Final = frozenset(b"RSKZTDCEINnst12dcGHWAv3V")
#: Messages whose payload nothing needs: counted from their header and skipped unbuffered.
_CLIENT_SKIP: Final = frozenset(b"DCSHXpFdG")
_SERVER_SKIP: Final = _SERVER_TYPES - frozenset(b"CEIsZ")
#: Client messages of the extended protocol that make up the next Execute's request.
_EXTENDED: Final = frozenset(b"PBDCH")

Event = Startup | SslRequest | Query | Sync | CopyIn | CommandComplete | ErrorResponse | \
    EmptyQuery | PortalSuspended | ReadyForQuery | NeedData


def looks_like_startup(data: bytes) -> bool:
    if len(data) < 8:
        return False
    length, code = struct.unpack_from("!ii", data)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        return length == 8
    return code == PROTOCOL_3 and 8 < length < 10000


def _cstr(payload: bytes, start: int = 0) -> tuple[str, int]:
    end = payload.find(b"\0", start)
    if end < 0:
        raise Malformed("PostgreSQL string without terminator")
    return payload[start:end].decode("utf-8", "replace"), end + 1


class PgReader:
    __slots__ = ("buf", "client", "eof", "pending_bytes", "pending_rows", "portals", "skip",
                 "state", "stmts", "ts")

    def __init__(self, *, client: bool) -> None:
        self.client = client
        self.stmts: dict[str, str] = {}  # prepared statement name -> SQL (bounded)
        self.portals: dict[str, str] = {}  # portal name -> SQL
        self.state = State.STARTUP if client else State.MESSAGES
        self.buf = bytearray()
        self.ts = 0
        self.eof = False
        self.skip = 0  # bytes of a skipped message still to come
        #: Bytes counted toward the next event: server, every message since the last result
        #: or ReadyForQuery; client, extended-protocol messages (or CopyData) since the last
        #: Execute/Sync/Query (or CopyDone).
        self.pending_bytes = 0
        self.pending_rows = 0  # server: DataRows since the last result

    def feed(self, data: bytes, ts_ns: int = 0) -> None:
        if self.state in (State.STARTUP, State.MESSAGES, State.SSL_REPLY):
            self.ts = ts_ns
            if self.skip:
                n = min(self.skip, len(data))
                self.skip -= n
                if n == len(data):
                    return
                data = data[n:]
            self.buf += data

    def feed_gap(self, nbytes: int, ts_ns: int = 0) -> None:
        self.state = step(self.state, "gap")
        self.buf.clear()
        self.skip = 0

    def feed_eof(self) -> None:
        self.eof = True

    def expect_ssl_reply(self) -> None:
        """The client asked for TLS: the server's next byte is the answer."""
        if self.state is State.MESSAGES and not self.buf and not self.skip:
            self.state = step(self.state, "expect-ssl")

    def _fail(self, msg: str) -> Malformed:
        self.state = step(self.state, "malformed")
        self.buf.clear()
        self.skip = 0
        return Malformed(msg)

    def next_event(self) -> Event:
        while True:
            st = self.state
            if st is State.ERROR:
                raise Malformed("PostgreSQL flow already failed")
            if st is State.RESYNC or st is State.OPAQUE:
                return NEED_DATA
            buf = self.buf
            if st is State.SSL_REPLY:
                if not buf:
                    return NEED_DATA
                b = buf[0]
                del buf[:1]
                if b == 0x4E:  # 'N': go on in clear text
                    self.state = step(st, "ssl-no")
                    continue
                self.state = step(st, "ssl-yes")
                return NEED_DATA
            if st is State.STARTUP:
                if len(buf) < 8:
                    return self._need()
                length, code = struct.unpack_from("!ii", buf)
                if length < 8 or length > 10000:
                    raise self._fail(f"PostgreSQL startup length {length}")
                if len(buf) < length:
                    return self._need()
                payload = bytes(buf[8:length])
                del buf[:length]
                if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
                    self.state = step(st, "ssl-request")
                    return SslRequest(self.ts)
                if code == CANCEL_REQUEST_CODE:
                    self.state = step(st, "cancel")
                    return NEED_DATA
                if code != PROTOCOL_3:
                    if buf[:1] == b"\x16" or payload[:1] == b"\x16":
                        self.state = step(st, "tls")
                        return NEED_DATA
                    raise self._fail(f"PostgreSQL protocol {code:#x} not supported")
                parts = payload.split(b"\0")
                params = dict(zip(parts[0::2], parts[1::2], strict=False))
                self.state = step(st, "startup")
                user = params.get(b"user", b"").decode("utf-8", "replace")
                db = params.get(b"database", b"").decode("utf-8", "replace")
                return Startup(user, db or user, self.ts)
            return self._typed(buf)

    def _typed(self, buf: bytearray) -> Event:
        """Typed messages until one makes an event (the hot loop: one pass per message)."""
        client = self.client
        types, skips = (_CLIENT_TYPES, _CLIENT_SKIP) if client else (_SERVER_TYPES, _SERVER_SKIP)
        while True:
            n = len(buf)
            if self.skip or n < 5:
                return self._need()
            t = buf[0]
            length = _I32(buf, 1)[0]
            if length < 4 or length > MAX_MESSAGE:
                raise self._fail(f"PostgreSQL message length {length}")
            if t not in types:
                raise self._fail(f"unknown PostgreSQL message type {t:#x}")
            size = length + 1
            if t in skips:  # counted, then dropped: what is buffered now, the rest on arrival
                if n >= size:
                    del buf[:size]
                else:
                    self.skip = size - n
                    buf.clear()
                if not client:
                    self.pending_bytes += size
                    if t == 0x44:  # D: DataRow
                        self.pending_rows += 1
                elif t in _EXTENDED or t == 0x64:  # ... or CopyData
                    self.pending_bytes += size
                elif t == 0x53:  # S: Sync (no payload)
                    self.pending_bytes = 0
                    return Sync(self.ts)
                continue
            if n < size:
                return self._need()
            payload = bytes(buf[5:size])
            del buf[:size]
            ev = self._message(t, payload, size)
            if ev is not None:
                return ev

    def _need(self) -> NeedData:
        if self.eof and (self.buf or self.skip):
            raise Truncated("flow ended inside a PostgreSQL message")
        return NEED_DATA

    def _message(self, t: int, payload: bytes, size: int) -> Any:
        if self.client:
            return self._client_message(t, payload, size)
        size += self.pending_bytes
        rows = self.pending_rows
        self.pending_bytes = self.pending_rows = 0
        if t == 0x43:  # C
            return CommandComplete(_cstr(payload)[0], rows, size, self.ts)
        if t == 0x45:  # E: (code byte, cstring)* \0
            fields: dict[int, str] = {}
            off = 0
            while off < len(payload) and payload[off]:
                code = payload[off]
                value, off = _cstr(payload, off + 1)
                fields[code] = value
            pos = fields.get(0x50, "")  # P: position in the query string
            return ErrorResponse(fields.get(0x43, ""), fields.get(0x4D, "")[:200],
                                 int(pos) if pos.isascii() and pos.isdigit() else 0, rows,
                                 size, self.ts)
        if t == 0x49:  # I
            return EmptyQuery(size, self.ts)
        if t == 0x73:  # s
            return PortalSuspended(rows, size, self.ts)
        # Z
        return ReadyForQuery(chr(payload[0]) if payload else "?", size, self.ts)

    def _client_message(self, t: int, payload: bytes, size: int) -> Any:
        if t == 0x51:  # Q
            self.pending_bytes = 0
            return Query(_cstr(payload)[0], False, size, self.ts)
        if t == 0x45:  # E: portal, max rows
            portal, _ = _cstr(payload)
            size += self.pending_bytes
            self.pending_bytes = 0
            return Query(self.portals.get(portal, ""), True, size, self.ts)
        if t == 0x63 or t == 0x66:  # c CopyDone, f CopyFail
            size += self.pending_bytes
            self.pending_bytes = 0
            return CopyIn(size, self.ts)
        self.pending_bytes += size
        if t == 0x50:  # P: statement name, query
            name, off = _cstr(payload)
            if len(self.stmts) >= 1024:
                self.stmts.clear()
            self.stmts[name] = _cstr(payload, off)[0]
        else:  # B: portal, statement, ...
            portal, off = _cstr(payload)
            stmt, _ = _cstr(payload, off)
            if len(self.portals) >= 1024:
                self.portals.clear()
            self.portals[portal] = self.stmts.get(stmt, "")
        return None
