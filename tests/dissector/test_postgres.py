from __future__ import annotations

import struct
from typing import Any

import pytest

from dissector._calls import Endpoints, PostgresSession, Redactor, SessionStats
from dissector._errors import Malformed, Truncated
from dissector.postgres import (
    CommandComplete,
    CopyIn,
    EmptyQuery,
    ErrorResponse,
    PgReader,
    PortalSuspended,
    Query,
    ReadyForQuery,
    SslRequest,
    Startup,
    Sync,
    first_keyword,
    statement_spans,
)
from schemas.calls import Call

from .helpers import chunkings, drain, same_at_every_split


def msg(t: bytes, payload: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(payload) + 4) + payload


def startup() -> bytes:
    body = struct.pack("!i", 196608) + b"user\0app\0database\0shop\0\0"
    return struct.pack("!i", len(body) + 4) + body


def parse(sql: str, name: str = "") -> bytes:
    return msg(b"P", f"{name}\0{sql}\0".encode() + b"\0\0")


def bind(stmt: str = "", portal: str = "") -> bytes:
    return msg(b"B", f"{portal}\0{stmt}\0".encode() + b"\0\0\0\0\0\0")


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


def q(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def cc(tag: str) -> bytes:
    return msg(b"C", tag.encode() + b"\0")


def row(v: bytes) -> bytes:
    return msg(b"D", struct.pack("!hi", 1, len(v)) + v)


def err(code: str, text: str, pos: int = 0) -> bytes:
    p = f"P{pos}\0".encode() if pos else b""
    return msg(b"E", f"SERROR\0C{code}\0M{text}\0".encode() + p + b"\0")


SSL = struct.pack("!ii", 8, 80877103)
DESCRIBE, SYNC, Z, Z_T = msg(b"D", b"P\0"), msg(b"S"), msg(b"Z", b"I"), msg(b"Z", b"T")
ROWDESC = msg(b"T", b"\0\0")
NOTICE = msg(b"N", b"SWARNING\0C25P01\0Mthere is no transaction in progress\0\0")
COPY_DATA = [msg(b"d", b"1\n"), msg(b"d", b"2\n")]

# (client bytes, server bytes) exchanges; a call's server bytes are listed per statement
LOGIN = (SSL + startup() + msg(b"p", b"secret\0"),
         b"N" + msg(b"R", b"\0\0\0\0") + msg(b"S", b"server_version\x0016\0")
         + msg(b"K", b"\0" * 8) + Z)
MULTI = q("SELECT 1; SELECT 2")
S_MULTI = [ROWDESC + row(b"1") + cc("SELECT 1"), ROWDESC + row(b"2") + cc("SELECT 1") + Z]
EXT = parse("select * from t where id=$1") + bind() + DESCRIBE + execute() + SYNC
S_EXT = [msg(b"1") + msg(b"2") + ROWDESC + row(b"a") + row(b"b") + cc("SELECT 2") + Z]
DROP = q("DROP TABLE nope")
S_DROP = [err("42P01", 'table "nope" does not exist') + Z]
SYNTAX = q("select 1; selec 2")
S_SYNTAX = [err("42601", 'syntax error at or near "selec"', 11) + Z]
COPY = q("create temp table c(x int); copy c from stdin")
COPY_IN = b"".join(COPY_DATA) + msg(b"c")
S_COPY = [cc("CREATE TABLE"), msg(b"G", b"\0\0\0") + cc("COPY 2") + Z]
PREPARE = parse("select $1", "s1") + SYNC
S_PREPARE = msg(b"1") + msg(b"t", b"\0\0") + msg(b"n") + Z  # no call
RUN_PREPARED = bind("s1") + DESCRIBE + execute() + SYNC
S_RUN_PREPARED = [msg(b"2") + ROWDESC + row(b"7") + cc("SELECT 1") + Z]
PIPELINE = (parse("SELECT 1") + bind() + execute() + parse("SELECT 1/0") + bind() + execute()
            + parse("SELECT 3") + bind() + execute() + SYNC)
S_PIPELINE = [msg(b"1") + msg(b"2") + row(b"1") + cc("SELECT 1"),
              msg(b"1") + msg(b"2") + err("22012", "division by zero") + Z]
EMPTY = q(";")
S_EMPTY = [msg(b"I") + Z]
SUSPEND = parse("select g from s") + bind() + execute(max_rows=1) + execute() + SYNC
S_SUSPEND = [msg(b"1") + msg(b"2") + row(b"1") + msg(b"s"), row(b"2") + cc("SELECT 1") + Z]
END = q("END;")
S_END = [NOTICE + cc("COMMIT") + Z]

CLIENT = (LOGIN[0] + MULTI + EXT + DROP + SYNTAX + COPY + COPY_IN + PREPARE + RUN_PREPARED
          + PIPELINE + EMPTY + SUSPEND + END)
SERVER = (LOGIN[1] + b"".join(S_MULTI + S_EXT + S_DROP + S_SYNTAX + S_COPY) + S_PREPARE
          + b"".join(S_RUN_PREPARED + S_PIPELINE + S_EMPTY + S_SUSPEND + S_END))

#: (command, key, tag, rows, sqlstate, statement, extended, complete, req_bytes, resp_bytes)
EXPECTED = [
    ("SELECT", "SELECT 1", "SELECT 1", 1, "", 1, False, True, len(MULTI), len(S_MULTI[0])),
    ("SELECT", "SELECT 2", "SELECT 1", 1, "", 2, False, True, 0, len(S_MULTI[1])),
    ("SELECT", "select * from t where id=$1", "SELECT 2", 2, "", 1, True, True,
     len(EXT) - len(SYNC), len(S_EXT[0])),
    ("DROP", "DROP TABLE nope", "", 0, "42P01", 1, False, True, len(DROP), len(S_DROP[0])),
    ("SELEC", "selec 2", "", 0, "42601", 2, False, True, len(SYNTAX), len(S_SYNTAX[0])),
    ("CREATE", "create temp table c(x int)", "CREATE TABLE", 0, "", 1, False, True, len(COPY),
     len(S_COPY[0])),
    ("COPY", "copy c from stdin", "COPY 2", 2, "", 2, False, True, len(COPY_IN),
     len(S_COPY[1])),
    ("SELECT", "select $1", "SELECT 1", 1, "", 1, True, True, len(RUN_PREPARED) - len(SYNC),
     len(S_RUN_PREPARED[0])),
    ("SELECT", "SELECT 1", "SELECT 1", 1, "", 1, True, True,
     len(parse("SELECT 1") + bind() + execute()), len(S_PIPELINE[0])),
    ("SELECT", "SELECT 1/0", "", 0, "22012", 2, True, True,
     len(parse("SELECT 1/0") + bind() + execute()), len(S_PIPELINE[1])),
    ("SELECT", "SELECT 3", "", 0, "", 3, True, False,
     len(parse("SELECT 3") + bind() + execute()), 0),
    ("", ";", "", 0, "", 1, False, True, len(EMPTY), len(S_EMPTY[0])),
    ("SELECT", "select g from s", "", 1, "", 1, True, True,
     len(SUSPEND) - len(SYNC) - len(execute()), len(S_SUSPEND[0])),
    ("SELECT", "select g from s", "SELECT 1", 1, "", 2, True, True, len(execute()),
     len(S_SUSPEND[1])),
    ("COMMIT", "END;", "COMMIT", 0, "", 1, False, True, len(END), len(S_END[0])),
]


def summary(calls: list[Call]) -> list[tuple[Any, ...]]:
    return [(c.command, c.key, c.extra["tag"], c.extra["rows"], c.extra["sqlstate"],
             c.extra["statement"], c.extra["extended"], c.complete, c.req_bytes, c.resp_bytes)
            for c in calls]


def session(out: list[Call]) -> PostgresSession:
    return PostgresSession(Endpoints("n", "tcp", "10.0.0.1", 5000, "10.0.0.2", 5432), 0,
                           out.append, SessionStats(), Redactor())


def test_client_every_split() -> None:
    evs = same_at_every_split(lambda: PgReader(client=True), CLIENT)
    assert isinstance(evs[0], SslRequest) and isinstance(evs[1], Startup)
    assert evs[1].user == "app" and evs[1].database == "shop"
    qs = [e for e in evs if isinstance(e, Query)]
    assert [(x.sql, x.extended) for x in qs][:5] == [
        ("SELECT 1; SELECT 2", False), ("select * from t where id=$1", True),
        ("DROP TABLE nope", False), ("select 1; selec 2", False),
        ("create temp table c(x int); copy c from stdin", False)]
    assert qs[1].size == len(EXT) - len(SYNC)  # Parse + Bind + Describe + Execute
    assert [e.size for e in evs if isinstance(e, CopyIn)] == [len(COPY_IN)]
    assert sum(isinstance(e, Sync) for e in evs) == 5


def make_server() -> PgReader:
    r = PgReader(client=False)
    r.expect_ssl_reply()
    return r


def test_server_every_split() -> None:
    evs = same_at_every_split(make_server, SERVER)
    assert [e.tag for e in evs if isinstance(e, CommandComplete)] == [
        "SELECT 1", "SELECT 1", "SELECT 2", "CREATE TABLE", "COPY 2", "SELECT 1", "SELECT 1",
        "SELECT 1", "COMMIT"]
    errs = [e for e in evs if isinstance(e, ErrorResponse)]
    assert [(e.code, e.position) for e in errs] == [("42P01", 0), ("42601", 11), ("22012", 0)]
    assert [type(e) for e in evs if isinstance(e, EmptyQuery | PortalSuspended)] == [
        EmptyQuery, PortalSuspended]
    assert sum(isinstance(e, ReadyForQuery) for e in evs) == 12
    # every byte after the SSL answer is in exactly one event's size; rows are DataRows
    assert sum(e.size for e in evs) == len(SERVER) - 1
    assert sum(getattr(e, "rows", 0) for e in evs) == 8  # the DataRows above


#: The conversation as it goes on the wire: each request, then its answer.
PAIRS = [(LOGIN[0], LOGIN[1]), (MULTI, b"".join(S_MULTI)), (EXT, b"".join(S_EXT)),
         (DROP, S_DROP[0]), (SYNTAX, S_SYNTAX[0]), (COPY, S_COPY[0]), (COPY_IN, S_COPY[1]),
         (PREPARE, S_PREPARE), (RUN_PREPARED, S_RUN_PREPARED[0]),
         (PIPELINE, b"".join(S_PIPELINE)), (EMPTY, S_EMPTY[0]), (SUSPEND, b"".join(S_SUSPEND)),
         (END, S_END[0])]


def converse(cut: tuple[int, int, list[bytes]] | None = None) -> list[Call]:
    """Feed PAIRS; ``cut`` = (exchange, side, chunks) feeds that one side in those chunks."""
    out: list[Call] = []
    s = session(out)
    for i, (c, sv) in enumerate(PAIRS):
        for d, whole in ((0, c), (1, sv)):
            for data in cut[2] if cut and (i, d) == cut[:2] else [whole]:
                s.on_data(d, data, 10 + i)
    s.on_end(-1, 99, "fin")
    return out


def test_session_one_call_per_statement() -> None:
    assert b"".join(c for c, _ in PAIRS) == CLIENT and b"".join(s for _, s in PAIRS) == SERVER
    out = converse()
    assert summary(out) == EXPECTED
    assert "42P01" in out[3].error and "skipped after an error" in out[10].error


def test_session_same_calls_at_every_split() -> None:
    """The conversation exchange by exchange, each side cut at every offset: same calls,
    same sizes (the held call and skipped messages never depend on segment borders)."""
    for k, pair in enumerate(PAIRS):
        for side in (0, 1):
            for cuts in chunkings(pair[side]):
                assert summary(converse((k, side, cuts))) == EXPECTED, (k, side, len(cuts))


def test_latency_from_the_query_to_each_statement() -> None:
    out: list[Call] = []
    s = session(out)
    s.on_data(0, LOGIN[0], 1)
    s.on_data(1, LOGIN[1], 2)
    s.on_data(0, MULTI, 100)
    s.on_data(1, S_MULTI[0], 150)
    assert out == []  # held: the ReadyForQuery may still count to it
    s.on_data(1, S_MULTI[1][:-3], 180)
    assert [c.latency_ns for c in out] == [50]
    s.on_data(1, S_MULTI[1][-3:], 190)
    assert [(c.req_ts_ns, c.resp_ts_ns, c.latency_ns) for c in out] == [
        (100, 150, 50), (100, 180, 80)]


def test_flow_end_flushes_held_and_unanswered() -> None:
    out: list[Call] = []
    s = session(out)
    s.on_data(0, LOGIN[0] + MULTI + PIPELINE, 1)
    s.on_data(1, LOGIN[1] + S_MULTI[0], 2)
    s.on_end(-1, 3, "fin")
    assert [(c.key, c.complete, c.error) for c in out] == [
        ("SELECT 1; SELECT 2", True, ""),  # one answer: not known to be one of several
        ("SELECT 1", False, "flow ended (fin)"), ("SELECT 1/0", False, "flow ended (fin)"),
        ("SELECT 3", False, "flow ended (fin)")]


def test_big_rows_and_copy_are_not_buffered() -> None:
    big = row(b"x" * (1 << 20))
    r = make_server()
    r.feed(b"N" + big[:1000] + b"")
    assert drain(r) == [] and len(r.buf) == 0 and r.skip == len(big) - 1000
    for i in range(1000, len(big), 1448):
        r.feed(big[i:i + 1448])
        assert drain(r) == [] and len(r.buf) == 0
    r.feed(cc("SELECT 1") + Z)
    evs = drain(r)
    assert [(type(e), e.size) for e in evs] == [(CommandComplete, len(big) + len(cc("SELECT 1"))),
                                                (ReadyForQuery, len(Z))]
    assert evs[0].rows == 1
    c = PgReader(client=True)
    c.feed(startup() + q("copy c from stdin") + msg(b"d", b"y" * 100000)[:5000])
    assert [type(e) for e in drain(c)] == [Startup, Query] and len(c.buf) == 0
    c.feed_eof()
    with pytest.raises(Truncated):
        drain(c)


def test_ssl_yes_makes_flow_opaque_and_bad_type_fails() -> None:
    r = make_server()
    r.feed(b"S\x16\x03\x01garbage")
    assert drain(r) == []
    r = PgReader(client=False)
    r.feed(msg(b"@", b"x"))
    with pytest.raises(Malformed):
        drain(r)
    r = PgReader(client=False)
    r.feed(msg(b"D", b"x")[:3])
    r.feed_eof()
    with pytest.raises(Truncated):
        drain(r)


@pytest.mark.parametrize(("sql", "statements"), [
    ("select 1 as a; select 'two' as b", ["select 1 as a", "select 'two' as b"]),
    ("BEGIN;", ["BEGIN"]),
    (" ;; -- nothing ;\n /* ; */ ", []),
    ("select ';' ; select $$;$$; select $a$ $$; $a$", ["select ';'", "select $$;$$",
                                                       "select $a$ $$; $a$"]),
    ("select E'\\';'; x", ["select E'\\';'", "x"]),
    ("select 'it''s;'; y", ["select 'it''s;'", "y"]),
    ("select 1 /* ; /* ; */ ; */ ; y -- ;\n z", ["select 1", "y -- ;\n z"]),
    ('select "a;""b"; c', ['select "a;""b"', "c"]),
    ("create rule r as on insert to t do (insert into u values (1); delete from v); x",
     ["create rule r as on insert to t do (insert into u values (1); delete from v)", "x"]),
    ("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC select case when true then 1 "
     "end; insert into t values (1); END; call p()",
     ["CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC select case when true then 1 "
      "end; insert into t values (1); END", "call p()"]),
    ("begin; end; select $1, a$b; x", ["begin", "end", "select $1, a$b", "x"]),
    ("select 'unterminated; x", ["select 'unterminated; x"]),
    ("select $q$ open; x", ["select $q$ open; x"]),
    ("select 1 /* open ; x", ["select 1"]),
])
def test_statement_spans(sql: str, statements: list[str]) -> None:
    assert [sql[a:b] for a, b in statement_spans(sql)] == statements


@pytest.mark.parametrize(("sql", "word"), [
    ("  -- x\n (select 1)", "SELECT"), ("END;", "END"), ("/* a */ with x", "WITH"),
    ("", ""), ("1", ""), ("\tvacuum;", "VACUUM"), ("Ünïcode_tbl", "ÜNÏCODE_TBL"),
])
def test_first_keyword(sql: str, word: str) -> None:
    assert first_keyword(sql) == word
