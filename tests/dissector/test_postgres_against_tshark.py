"""Acceptance: PostgreSQL calls from real psql and pgbench traffic (PostgreSQL server in a
network namespace, clients in another, tcpdump on the veth between) against tshark's
``pgsql`` dissection of the same capture, through the pcap path and through Kafka.

The reference below is built from tshark's messages alone (type, length, tag, SQLSTATE,
query, statement and portal names, frame time) with the rules docs/dissector.md states, so
rawcap's reader, pairing and byte counting are checked against an independent parse.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from dissector.postgres import first_keyword
from rawcap.config import Config
from rawcap.timeparse import format_ns

from .netlab import NetLab
from .pglab import PgServer

RAWCAP = [sys.executable, "-m", "rawcap.cli"]
PGBENCH_MODES = ("simple", "extended", "prepared")
CLIENTS, TRANSACTIONS = 2, 4
ISSUE = "select 1 as a; select 'two' as b"
MID_ERROR = "select 1; select 1/0; select 3"
SYNTAX_ERROR = "select 1; selec 2"
TRICKY = ("select ';' as a; select $$;$$ as b; select E'\\';' as c /* ; */; "
          "select \"x;y\" from (select 1 as \"x;y\") s; "
          "create function pg_temp.f() returns int language sql begin atomic select 1; "
          "select 2; end; select pg_temp.f()")
TRICKY_KEYS = ["select ';' as a", "select $$;$$ as b", "select E'\\';' as c",
               "select \"x;y\" from (select 1 as \"x;y\") s",
               "create function pg_temp.f() returns int language sql begin atomic select 1; "
               "select 2; end", "select pg_temp.f()"]
COPY_IN = "create temp table c(x int); copy c from stdin; select count(*) from c"
COPY_ROWS = 2000
BIG = "select g, repeat('x', 200) from generate_series(1, 3000) g"
PSQL: list[tuple[str, str | None]] = [
    (ISSUE, None), (MID_ERROR, None), (SYNTAX_ERROR, None), (TRICKY, None),
    ("BEGIN; create table t(x int); insert into t values (1),(2); update t set x = x + 1; "
     "select * from t; ROLLBACK", None),
    (COPY_IN, "".join(f"{i}\n" for i in range(COPY_ROWS)) + "\\.\n"),
    (f"copy (select g from generate_series(1, {COPY_ROWS}) g) to stdout", None),
    (BIG, None), ("END;", None), ("do $$ begin raise notice 'hi'; end $$; select 1", None),
    (";", None),
]
PIPELINE = "\\startpipeline\nSELECT 1 AS one;\nSELECT 2 AS two;\nSELECT 3 AS three;\n\\endpipeline\n"
PIPELINE_ERROR = ("\\startpipeline\nSELECT 1 AS one;\nSELECT 1/0;\nSELECT 3 AS three;\n"
                  "\\endpipeline\n")


@pytest.fixture(scope="module")
def pg_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pgbench in the three protocol modes, pgbench pipelines (one failing), and psql
    statements (multi-statement, errors, COPY both ways, a result of many segments)."""
    tmp = tmp_path_factory.mktemp("pgcap")
    out = tmp / "pg.pcap"
    (tmp / "pipe.sql").write_text(PIPELINE)
    (tmp / "pipe_err.sql").write_text(PIPELINE_ERROR)
    with NetLab("p") as lab, PgServer(lab) as pg:
        pg.client("pgbench", "-i", "-s", "1", "-q")  # before the capture: 100k rows of COPY
        dump = lab.capture(out)
        for mode in PGBENCH_MODES:
            pg.client("pgbench", "-M", mode, "-c", str(CLIENTS), "-t", str(TRANSACTIONS))
        pg.client("pgbench", "-n", "-M", "extended", "-t", "2", "-f", str(tmp / "pipe.sql"))
        bad = pg.client("pgbench", "-n", "-M", "extended", "-t", "1", "-f",
                        str(tmp / "pipe_err.sql"), check=False)
        assert "division by zero" in bad.stderr
        for sql, stdin in PSQL:
            pg.psql(sql, stdin=stdin, check=False)
        time.sleep(1.0)
        lab.stop(dump)
    return out


# --- the reference, from tshark ------------------------------------------------------


@dataclass
class Msg:
    client: bool
    type: str
    size: int  # whole message: type byte + length field's value
    ts_ns: int
    f: dict[str, Any]


@dataclass
class Ref:
    """One call as the rules say it must come out of tshark's messages."""

    stream: int
    complete: bool
    tag: str
    sqlstate: str
    rows: int
    req_bytes: int
    resp_bytes: int
    req_ts_ns: int
    resp_ts_ns: int
    extended: bool
    sql: str | None  # None: a statement of a multi-statement Query (checked apart)
    statement: int
    spans: list[str] = field(default_factory=list)


def _ns(epoch: str) -> int:
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def tshark_messages(pcap: Path) -> dict[int, list[Msg]]:
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "pgsql", "-T", "json", "-J",
                          "frame tcp pgsql", "--no-duplicate-keys"],
                         capture_output=True, check=True, text=True).stdout
    streams: dict[int, list[Msg]] = defaultdict(list)
    for pkt in json.loads(out):
        layers = pkt["_source"]["layers"]
        ts = _ns(layers["frame"]["frame.time_epoch"])
        stream = int(layers["tcp"]["tcp.stream"])
        client = layers["tcp"]["tcp.dstport"] == "5432"
        pgs = layers["pgsql"]
        for m in pgs if isinstance(pgs, list) else [pgs]:
            streams[stream].append(Msg(client, m["pgsql.type"], int(m["pgsql.length"]) + 1,
                                       ts, m))
    return streams


def _tag_rows(tag: str, counted: int) -> int:
    n = tag.rpartition(" ")[2]
    return int(n) if n.isdigit() else counted


def reference(stream: int, msgs: list[Msg]) -> list[Ref]:
    # client: batches of requests (a Query, or the Executes up to a Sync), COPY payloads
    batches: list[tuple[str, list[tuple[str, int, int]]]] = []
    stmts: dict[str, str] = {}
    portals: dict[str, str] = {}
    execs: list[tuple[str, int, int]] = []
    ext = copy = 0
    copies: list[int] = []
    for m in (m for m in msgs if m.client):
        t = m.type
        if t == "Simple query":
            batches.append(("Q", [(m.f["pgsql.query"], m.size, m.ts_ns)]))
            ext = 0
        elif t == "Parse":
            stmts[m.f["pgsql.statement"]] = m.f["pgsql.query"]
            ext += m.size
        elif t == "Bind":
            portals[m.f["pgsql.portal"]] = stmts[m.f["pgsql.statement"]]
            ext += m.size
        elif t in ("Describe", "Close", "Flush"):
            ext += m.size
        elif t == "Execute":
            execs.append((portals[m.f["pgsql.portal"]], ext + m.size, m.ts_ns))
            ext = 0
        elif t == "Sync":
            batches.append(("X", execs))
            execs, ext = [], 0
        elif t == "Copy data":
            copy += m.size
        elif t in ("Copy completion", "Copy failure"):
            copies.append(copy + m.size)
            copy = 0
    # server: the results of each batch, split at ReadyForQuery
    results: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    span = rows = 0
    login, copy_in = True, False
    for m in (m for m in msgs if not m.client):
        span += m.size
        rows += m.type == "Data row"
        copy_in |= m.type == "CopyIn response"
        if m.type == "Ready for query":
            if login:
                login, span, rows = False, 0, 0
                continue
            if cur:
                cur[-1]["resp_bytes"] += span
            results.append(cur)
            cur, span, rows = [], 0, 0
        elif m.type in ("Command completion", "Error", "Empty query", "Portal suspended"):
            tag = m.f.get("pgsql.tag", "")
            cur.append({"tag": tag, "sqlstate": m.f.get("pgsql.code", ""),
                        "rows": _tag_rows(tag, rows), "resp_bytes": span, "ts": m.ts_ns,
                        "copy": copies.pop(0) if copy_in else 0,
                        "located": "pgsql.position" in m.f})
            span = rows = 0
            copy_in = False
    assert len(results) <= len(batches)
    refs = []
    for (kind, reqs), res in zip(batches, results, strict=False):
        if kind == "Q":
            sql, size, ts = reqs[0]
            for i, r in enumerate(res):
                refs.append(Ref(stream, True, r["tag"], r["sqlstate"], r["rows"],
                                (size if i == 0 else 0) + r["copy"], r["resp_bytes"], ts,
                                r["ts"], False, sql if len(res) == 1 and not r["located"]
                                else None, i + 1))
        else:
            for i, (sql, size, ts) in enumerate(reqs):
                if i < len(res):
                    r = res[i]
                    refs.append(Ref(stream, True, r["tag"], r["sqlstate"], r["rows"],
                                    size + r["copy"], r["resp_bytes"], ts, r["ts"], True, sql,
                                    i + 1))
                else:  # skipped after an error
                    refs.append(Ref(stream, False, "", "", 0, size, 0, ts, 0, True, sql, i + 1))
    return refs


def rawcap_calls(pcap: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*RAWCAP, "dissect", "--pcap", str(pcap), "--json", "--no-store"],
                         capture_output=True, check=True, text=True).stdout
    return [c for c in map(json.loads, out.splitlines()) if c["proto"] == "postgres"]


def _client_port(msgs: list[Msg], pcap_calls: list[dict[str, Any]]) -> int:
    ts = next(m.ts_ns for m in msgs if m.client and m.type in ("Simple query", "Execute"))
    return next(c["src_port"] for c in pcap_calls if c["req_ts_ns"] == ts)


def comparable(c: dict[str, Any]) -> tuple[Any, ...]:
    x = c["extra"]
    return (c["complete"], x["tag"], x["sqlstate"], x["rows"], c["req_bytes"], c["resp_bytes"],
            c["req_ts_ns"], c["resp_ts_ns"], x["extended"])


@pytest.fixture(scope="module")
def msgs(pg_pcap: Path) -> dict[int, list[Msg]]:
    return tshark_messages(pg_pcap)


@pytest.fixture(scope="module")
def both(pg_pcap: Path, msgs: dict[int, list[Msg]]) -> tuple[list[Ref], list[dict[str, Any]]]:
    return [r for s, m in sorted(msgs.items()) for r in reference(s, m)], rawcap_calls(pg_pcap)


def by_key(calls: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The calls of the psql connection (one Query each) that ran the statement ``key``."""
    port = next(c["src_port"] for c in calls if c["key"] == key and not c["extra"]["extended"])
    return [c for c in calls if c["src_port"] == port]


# --- the tests ------------------------------------------------------------------------


def test_every_call_matches_tshark(msgs: dict[int, list[Msg]],
                                   both: tuple[list[Ref], list[dict[str, Any]]]) -> None:
    refs, calls = both
    assert len(refs) > 150 and len(calls) == len(refs)
    for stream, smsgs in msgs.items():
        want = [r for r in refs if r.stream == stream]
        if not want:
            continue
        port = _client_port(smsgs, calls)
        got = [c for c in calls if c["src_port"] == port]
        assert [comparable(c) for c in got] == [
            (r.complete, r.tag, r.sqlstate, r.rows, r.req_bytes, r.resp_bytes, r.req_ts_ns,
             r.resp_ts_ns, r.extended) for r in want], f"tcp.stream {stream}"
        for c, r in zip(got, want, strict=True):
            if r.sql is not None:
                assert c["key"] == r.sql[:256]
            assert c["extra"]["statement"] == r.statement or r.sql is None
    # every complete call has a response size; the command is the tag's first word
    for c in calls:
        tag = c["extra"]["tag"]
        assert c["resp_bytes"] > 0 or not c["complete"]
        assert c["command"] == (tag.split(" ")[0] if tag else first_keyword(c["key"]))
        assert not c["command"].endswith(";")


def test_pgbench_modes(both: tuple[list[Ref], list[dict[str, Any]]]) -> None:
    _, calls = both
    ports = {c["src_port"] for c in calls if c["key"].startswith("UPDATE pgbench_accounts")}
    assert len(ports) == len(PGBENCH_MODES) * CLIENTS
    bench = [c for c in calls if c["src_port"] in ports]
    for extended, modes in ((False, 1), (True, 2)):
        mine = [c for c in bench if c["extra"]["extended"] == extended]
        runs = modes * CLIENTS * TRANSACTIONS
        # pgbench sends "BEGIN;" and "END;": one command name each, the server's (END is a
        # COMMIT), never with the semicolon
        assert [c["command"] for c in mine if c["key"] == "BEGIN;"] == ["BEGIN"] * runs
        assert [c["command"] for c in mine if c["key"] == "END;"] == ["COMMIT"] * runs
        assert {c["command"] for c in mine} == {"BEGIN", "UPDATE", "SELECT", "INSERT",
                                                "COMMIT"}
        upd = [c for c in mine if c["key"].startswith("UPDATE pgbench_accounts")]
        assert len(upd) == runs and {c["extra"]["rows"] for c in upd} == {1}
        assert all(c["complete"] and c["resp_bytes"] > 0 and c["req_bytes"] > 0 for c in mine)
    # -M prepared: Parse went in a batch of its own, so the call's request is smaller than
    # its SQL (Bind/Describe/Execute); -M extended sends Parse with every Execute
    ext = [c for c in bench if c["extra"]["extended"] and c["key"] not in ("BEGIN;", "END;")]
    prepared = [c for c in ext if c["req_bytes"] < len(c["key"])]
    assert len(prepared) == len(ext) // 2 == 5 * CLIENTS * TRANSACTIONS


def test_multi_statement_query_one_call_per_statement(
        msgs: dict[int, list[Msg]], both: tuple[list[Ref], list[dict[str, Any]]]) -> None:
    _, calls = both
    issue = by_key(calls, "select 1 as a")
    assert [(c["key"], c["command"], c["extra"]["tag"], c["extra"]["rows"],
             c["extra"]["statement"]) for c in issue] == [
        ("select 1 as a", "SELECT", "SELECT 1", 1, 1),
        ("select 'two' as b", "SELECT", "SELECT 1", 1, 2)]
    q_ts = issue[0]["req_ts_ns"]
    assert all(c["req_ts_ns"] == q_ts and c["latency_ns"] == c["resp_ts_ns"] - q_ts
               for c in issue)
    assert issue[0]["req_bytes"] == len(ISSUE) + 6 and issue[1]["req_bytes"] == 0

    mid = by_key(calls, "select 1/0")  # the server stops at the error: no call for select 3
    assert [(c["key"], c["extra"]["tag"], c["extra"]["sqlstate"], c["extra"]["statement"])
            for c in mid] == [("select 1", "SELECT 1", "", 1), ("select 1/0", "", "22012", 2)]
    assert mid[1]["complete"] and "division by zero" in mid[1]["error"]

    syn = by_key(calls, "selec 2")  # a syntax error runs nothing; its position names it
    assert [(c["key"], c["command"], c["extra"]["sqlstate"], c["extra"]["statement"])
            for c in syn] == [("selec 2", "SELEC", "42601", 2)]

    tricky = by_key(calls, "select $$;$$ as b")  # the server's six CommandCompletes, six statements
    assert [c["key"] for c in tricky] == TRICKY_KEYS
    assert [c["extra"]["statement"] for c in tricky] == list(range(1, 7))

    tx = by_key(calls, "create table t(x int)")
    assert [(c["command"], c["extra"]["rows"]) for c in tx] == [
        ("BEGIN", 0), ("CREATE", 0), ("INSERT", 2), ("UPDATE", 2), ("SELECT", 2),
        ("ROLLBACK", 0)]
    # the sizes of a Query's statements add up to what the server sent after the login
    stream = next(m for m in msgs.values()
                  if any(x.f.get("pgsql.query", "").startswith("BEGIN; create") for x in m))
    login_end = next(i for i, m in enumerate(stream) if m.type == "Ready for query")
    assert sum(c["resp_bytes"] for c in tx) == sum(
        m.size for m in stream[login_end + 1:] if not m.client)


def test_copy_big_results_notices_and_empty(both: tuple[list[Ref], list[dict[str, Any]]]
                                            ) -> None:
    _, calls = both
    cin = by_key(calls, "copy c from stdin")
    assert [(c["command"], c["extra"]["rows"]) for c in cin] == [
        ("CREATE", 0), ("COPY", COPY_ROWS), ("SELECT", 1)]
    payload = len("".join(f"{i}\n" for i in range(COPY_ROWS)))
    assert cin[1]["req_bytes"] > payload and cin[2]["req_bytes"] == 0
    cout = [c for c in calls if c["key"].startswith("copy (select g")]
    assert len(cout) == 1 and cout[0]["extra"]["rows"] == COPY_ROWS
    assert cout[0]["resp_bytes"] > len("".join(f"{i}\n" for i in range(1, COPY_ROWS + 1)))
    big = [c for c in calls if c["key"] == BIG]
    assert len(big) == 1 and big[0]["extra"]["rows"] == 3000
    assert big[0]["resp_bytes"] > 3000 * 200
    end = [c for c in calls if c["key"] == "END;" and not c["extra"]["extended"]
           and c["resp_bytes"] > 100]  # psql's: with the server's warning
    assert len(end) == 1 and end[0]["command"] == "COMMIT"
    empty = [c for c in calls if c["key"] == ";"]
    assert len(empty) == 1 and empty[0]["complete"] and empty[0]["command"] == ""
    assert empty[0]["resp_bytes"] == 5 + 6  # EmptyQueryResponse + ReadyForQuery


def test_extended_pipeline_and_error_inside_it(
        both: tuple[list[Ref], list[dict[str, Any]]]) -> None:
    _, calls = both
    ok = [c for c in calls if c["key"] in ("SELECT 1 AS one;", "SELECT 2 AS two;",
                                           "SELECT 3 AS three;")]
    by_port: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for c in ok:
        by_port[c["src_port"]].append(c)
    good, bad = sorted(by_port.values(), key=len, reverse=True)
    assert [c["extra"]["statement"] for c in good] == [1, 2, 3] * 2
    assert all(c["complete"] and c["extra"]["tag"] == "SELECT 1" for c in good)
    assert len({c["req_ts_ns"] for c in good}) == 2  # one segment per pipeline
    errs = [c for c in calls if c["src_port"] == bad[0]["src_port"]]
    assert [(c["key"], c["complete"], c["extra"]["sqlstate"], c["extra"]["statement"])
            for c in errs] == [("SELECT 1 AS one;", True, "", 1),
                               ("SELECT 1/0;", True, "22012", 2),
                               ("SELECT 3 AS three;", False, "", 3)]
    assert "skipped after an error" in errs[2]["error"]


def test_kafka_path_and_store_give_the_same_calls(
        pg_pcap: Path, both: tuple[list[Ref], list[dict[str, Any]]],
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    from .test_engine import frames
    from .test_kafka import cli, produce

    _, want = both
    cfg = make_config()
    node = f"pg-{uuid.uuid4().hex[:6]}"
    fr = frames(pg_pcap)
    anyio.run(produce, cfg, node, fr)
    lo, hi = format_ns(fr[0][0] - 1_000_000), format_ns(fr[-1][0] + 1_000_000)
    db = tmp_path / "calls.db"
    r = cli(cfg, "dissect", "--from", lo, "--to", hi, "--node", node, "--json", "--db",
            str(db), "--no-publish", "--no-k8s")
    assert r.returncode == 0, r.stderr
    got = [c for c in map(json.loads, r.stdout.splitlines()) if c["proto"] == "postgres"]

    def strip(cs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for c in cs:
            yield {k: v for k, v in c.items() if k != "node"}

    assert list(strip(got)) == list(strip(want))
    # every statement of a multi-statement Query is its own row in the store
    stored = cli(cfg, "calls", "--db", str(db), "--proto", "postgres", "--json")
    assert stored.returncode == 0, stored.stderr
    assert len(stored.stdout.splitlines()) == len(want)
    text = cli(cfg, "calls", "--db", str(db), "--proto", "postgres").stdout
    assert "select 'two' as b -> SELECT 1" in text
    assert "select 1/0 -> 22012 division by zero" in text
