from __future__ import annotations

import struct

import pytest

from dissector._calls import Endpoints, PostgresSession, Redactor, SessionStats
from dissector._errors import Malformed
from dissector.postgres import (
    CommandComplete,
    ErrorResponse,
    PgReader,
    Query,
    ReadyForQuery,
    SslRequest,
    Startup,
)
from schemas.calls import Call

from .helpers import drain, same_at_every_split


def msg(t: bytes, payload: bytes) -> bytes:
    return t + struct.pack("!i", len(payload) + 4) + payload


def startup() -> bytes:
    body = struct.pack("!i", 196608) + b"user\0app\0database\0shop\0\0"
    return struct.pack("!i", len(body) + 4) + body


SSL = struct.pack("!ii", 8, 80877103)
CLIENT = (SSL + startup() + msg(b"p", b"secret\0") + msg(b"Q", b"SELECT 1; SELECT 2\0")
          + msg(b"P", b"\0select * from t where id=$1\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0")
          + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b"") + msg(b"Q", b"DROP TABLE nope\0"))
SERVER = (b"N" + msg(b"R", b"\0\0\0\0") + msg(b"S", b"server_version\x0016\0")
          + msg(b"Z", b"I") + msg(b"T", b"\0\0") + msg(b"D", b"\0\1\0\0\0\1" + b"1")
          + msg(b"C", b"SELECT 1\0") + msg(b"D", b"\0\1\0\0\0\1" + b"2")
          + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I") + msg(b"1", b"") + msg(b"2", b"")
          + msg(b"C", b"SELECT 0\0") + msg(b"Z", b"I")
          + msg(b"E", b"SERROR\0C42P01\0Mtable \"nope\" does not exist\0\0") + msg(b"Z", b"I"))


def test_client_every_split() -> None:
    evs = same_at_every_split(lambda: PgReader(client=True), CLIENT)
    assert isinstance(evs[0], SslRequest) and isinstance(evs[1], Startup)
    assert evs[1].user == "app" and evs[1].database == "shop"
    qs = [e for e in evs if isinstance(e, Query)]
    assert [(q.sql, q.extended) for q in qs] == [("SELECT 1; SELECT 2", False),
                                                 ("select * from t where id=$1", True),
                                                 ("DROP TABLE nope", False)]


def make_server() -> PgReader:
    r = PgReader(client=False)
    r.expect_ssl_reply()
    return r


def test_server_every_split() -> None:
    evs = same_at_every_split(make_server, SERVER)
    assert [e.tag for e in evs if isinstance(e, CommandComplete)] == \
        ["SELECT 1", "SELECT 1", "SELECT 0"]
    err = [e for e in evs if isinstance(e, ErrorResponse)]
    assert err[0].code == "42P01"
    assert sum(isinstance(e, ReadyForQuery) for e in evs) == 4


def test_session_pairs_queries() -> None:
    out: list[Call] = []
    s = PostgresSession(Endpoints("n", "tcp", "10.0.0.1", 5000, "10.0.0.2", 5432), 0,
                        out.append, SessionStats(), Redactor())
    s.on_data(0, CLIENT, 1)
    s.on_data(1, SERVER, 2)
    assert [(c.command, c.complete, c.extra["sqlstate"], c.extra["rows"]) for c in out] == [
        ("SELECT", True, "", 2), ("SELECT", True, "", 0), ("DROP", True, "42P01", 0)]
    assert "42P01" in out[2].error and out[1].key == "select * from t where id=$1"


def test_ssl_yes_makes_flow_opaque_and_bad_type_fails() -> None:
    r = make_server()
    r.feed(b"S\x16\x03\x01garbage")
    assert drain(r) == []
    r = PgReader(client=False)
    r.feed(msg(b"@", b"x"))
    with pytest.raises(Malformed):
        drain(r)
