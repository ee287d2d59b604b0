"""Sans-I/O PostgreSQL v3 reader for one direction (simple and extended query protocol).

Client: an untyped first message (StartupMessage, SSLRequest, CancelRequest), then typed
messages ``type | int32 length | payload``: ``Q`` (simple query) and ``P`` (Parse, the SQL
of the extended protocol) become ``Query`` events. Server: ``C`` CommandComplete, ``E``
ErrorResponse (SQLSTATE + message), ``D`` DataRow (counted), ``Z`` ReadyForQuery, which
ends a request. After an SSLRequest the server answers one byte: ``S`` means TLS follows
and the flow is opaque from there. Messages are capped at 16 MiB.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from .._errors import Malformed, Truncated
from .._sentinel import NEED_DATA, NeedData
from ._events import (
    CommandComplete,
    ErrorResponse,
    Query,
    ReadyForQuery,
    RowData,
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

Event = Startup | SslRequest | Query | CommandComplete | ErrorResponse | RowData | \
    ReadyForQuery | NeedData


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
    __slots__ = ("buf", "client", "eof", "portals", "state", "stmts", "ts")

    def __init__(self, *, client: bool) -> None:
        self.client = client
        self.stmts: dict[str, str] = {}  # prepared statement name -> SQL (bounded)
        self.portals: dict[str, str] = {}  # portal name -> SQL
        self.state = State.STARTUP if client else State.MESSAGES
        self.buf = bytearray()
        self.ts = 0
        self.eof = False

    def feed(self, data: bytes, ts_ns: int = 0) -> None:
        if self.state in (State.STARTUP, State.MESSAGES, State.SSL_REPLY):
            self.ts = ts_ns
            self.buf += data

    def feed_gap(self, nbytes: int, ts_ns: int = 0) -> None:
        self.state = step(self.state, "gap")
        self.buf.clear()

    def feed_eof(self) -> None:
        self.eof = True

    def expect_ssl_reply(self) -> None:
        """The client asked for TLS: the server's next byte is the answer."""
        if self.state is State.MESSAGES and not self.buf:
            self.state = step(self.state, "expect-ssl")

    def _fail(self, msg: str) -> Malformed:
        self.state = step(self.state, "malformed")
        self.buf.clear()
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
            # typed messages
            if len(buf) < 5:
                return self._need()
            t = buf[0]
            length = _I32(buf, 1)[0]
            if length < 4 or length > MAX_MESSAGE:
                raise self._fail(f"PostgreSQL message length {length}")
            if t not in (_CLIENT_TYPES if self.client else _SERVER_TYPES):
                raise self._fail(f"unknown PostgreSQL message type {t:#x}")
            if len(buf) < 1 + length:
                return self._need()
            payload = bytes(buf[5:1 + length])
            del buf[:1 + length]
            ev = self._message(t, payload, length + 1)
            if ev is not None:
                return ev

    def _need(self) -> NeedData:
        if self.eof and self.buf:
            raise Truncated("flow ended inside a PostgreSQL message")
        return NEED_DATA

    def _message(self, t: int, payload: bytes, size: int) -> Any:
        if self.client:
            if t == 0x51:  # Q
                return Query(_cstr(payload)[0], False, size, self.ts)
            if t == 0x50:  # P: statement name, query
                name, off = _cstr(payload)
                if len(self.stmts) >= 1024:
                    self.stmts.clear()
                self.stmts[name] = _cstr(payload, off)[0]
            elif t == 0x42:  # B: portal, statement, ...
                portal, off = _cstr(payload)
                stmt, _ = _cstr(payload, off)
                if len(self.portals) >= 1024:
                    self.portals.clear()
                self.portals[portal] = self.stmts.get(stmt, "")
            elif t == 0x45:  # E: portal, max rows
                portal, _ = _cstr(payload)
                return Query(self.portals.get(portal, ""), True, size, self.ts)
            elif t == 0x53:  # S
                return Sync(self.ts)
            return None
        if t == 0x43:  # C
            return CommandComplete(_cstr(payload)[0], self.ts)
        if t == 0x45:  # E: (code byte, cstring)* \0
            fields: dict[int, str] = {}
            off = 0
            while off < len(payload) and payload[off]:
                code = payload[off]
                value, off = _cstr(payload, off + 1)
                fields[code] = value
            return ErrorResponse(fields.get(0x43, ""), fields.get(0x4D, "")[:200], self.ts)
        if t == 0x44:  # D
            return RowData(len(payload))
        if t == 0x5A:  # Z
            return ReadyForQuery(chr(payload[0]) if payload else "?", self.ts)
        return None
