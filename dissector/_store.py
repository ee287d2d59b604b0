"""The local calls store: sqlite, bounded by ``tap.capture.dbMaxSize``, oldest evicted.

One row per call: the columns ``rawcap calls`` filters on, plus the call itself as a
``rawcap.calls`` version-2 row (``schemas.calls.call_rows``: the msgpack array of its values,
the same bytes that are published). Identity: the unique index
``(ts_ns, ident)``, where ``ident`` is a 64-bit hash (BLAKE2b) of what makes a call itself
(node, transport, both ends, request and response times, protocol, HTTP/2 stream id, method,
path, status and sizes), so replaying a range twice adds no row, and a call is one index
entry of two integers instead of a long text key. The same index serves time-window queries.

After each committed batch the store checks its size (pages in use, not the file size,
which sqlite only shrinks on VACUUM) and deletes the oldest rows (by capture time) until it
is back under 90 % of the budget; freed pages are reused by later inserts, so the file stops
growing at about the budget.

:class:`StoreWriter` writes from a thread of its own, fed through a bounded queue: sqlite
does its part without the GIL, beside the dissector. A store of the first layout
(``uid TEXT UNIQUE``) is converted in place when opened.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from hashlib import blake2b
from pathlib import Path
from typing import cast

from schemas.calls import Call, call_rows, decode_call, decode_row

__all__ = ("CallStore", "StoreWriter", "call_ident")

log = logging.getLogger("rawcap.dissector")

#: ``PRAGMA user_version`` of this layout (0: the first one, with ``uid TEXT UNIQUE``)
LAYOUT = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS calls (
         id INTEGER PRIMARY KEY,
         ts_ns INTEGER NOT NULL,
         ident INTEGER NOT NULL,
         node TEXT NOT NULL,
         proto TEXT NOT NULL,
         src_ip TEXT, src_port INTEGER, dst_ip TEXT, dst_port INTEGER,
         record BLOB NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS calls_ts ON calls(ts_ns, ident)",
)
_INSERT = ("INSERT OR IGNORE INTO calls(ts_ns,ident,node,proto,src_ip,src_port,dst_ip,dst_port,"
           "record) VALUES (?,?,?,?,?,?,?,?,?)")

Row = tuple[int, int, str, str, str, int, str, int, bytes]


def call_ident(c: Call) -> int:
    """The identity hash of a call (signed 64 bits, as sqlite stores integers)."""
    text = (f"{c.node}|{c.transport}|{c.src_ip}|{c.src_port}|{c.dst_ip}|{c.dst_port}|"
            f"{c.req_ts_ns}|{c.resp_ts_ns}|{c.proto}|{c.extra.get('stream_id', '')}|"
            f"{c.method}|{c.path}|{c.status}|{c.req_bytes}|{c.resp_bytes}")
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


def rows_of(calls: Sequence[Call], records: Sequence[bytes] | None = None) -> list[Row]:
    """Store rows of ``calls``; ``records`` are their ``call_rows`` bytes when the caller
    has them already (they are published too)."""
    if records is None:
        records = call_rows(calls)
    return [(c.req_ts_ns or c.resp_ts_ns, call_ident(c), c.node, c.proto, c.src_ip, c.src_port,
             c.dst_ip, c.dst_port, rec) for c, rec in zip(calls, records, strict=True)]


class CallStore:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: no fsync per commit; a crash keeps the file consistent and may lose
        # the last batches, which a replay of the range brings back (raw packets are the truth)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-16384")  # 16 MiB
        self._open_layout()
        self.page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        self.evicted = 0

    def _open_layout(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(calls)")}
        if version < LAYOUT and "uid" in cols:
            self._convert_v1()
        for stmt in _SCHEMA:
            self.db.execute(stmt)
        self.db.execute(f"PRAGMA user_version={LAYOUT}")

    def _convert_v1(self) -> None:
        """Rows of the first layout (``uid TEXT UNIQUE``, AUTOINCREMENT) into this one."""
        n = self.db.execute("SELECT count(*) FROM calls").fetchone()[0]
        log.info("converting the calls store to layout %d", LAYOUT,
                 extra={"path": str(self.path), "calls": n})
        with self.db:  # one transaction: a conversion that fails leaves the old layout
            self.db.execute("BEGIN")
            self.db.execute("ALTER TABLE calls RENAME TO calls_v1")
            self.db.execute("DROP INDEX IF EXISTS calls_ts")
            for stmt in _SCHEMA:
                self.db.execute(stmt)
            cur = self.db.execute("SELECT record FROM calls_v1 ORDER BY id")
            while True:
                recs = [r[0] for r in cur.fetchmany(5000)]
                if not recs:
                    break
                self.db.executemany(_INSERT, rows_of([decode_call(r) for r in recs]))
            self.db.execute("DROP TABLE calls_v1")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CallStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def used_bytes(self) -> int:
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self.page_size

    def add(self, calls: Iterable[Call]) -> int:
        """Store calls (one transaction); returns how many were new."""
        return self.add_rows(rows_of(list(calls)))

    def add_rows(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        with self.db:
            added = self.db.executemany(_INSERT, rows).rowcount
        self._enforce()
        return added

    def _enforce(self) -> None:
        used = self.used_bytes()
        if used <= self.max_bytes:
            return
        target = int(self.max_bytes * 0.9)
        total = self.db.execute("SELECT count(*) FROM calls").fetchone()[0]
        while used > target and total:
            # Rows are roughly the same size: delete the share that brings us under target.
            n = max(1, int(total * (used - target) / used) + 1)
            with self.db:
                self.db.execute("DELETE FROM calls WHERE id IN (SELECT id FROM calls "
                                "ORDER BY ts_ns, ident LIMIT ?)", (n,))
            self.evicted += n
            total -= n
            used = self.used_bytes()

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM calls").fetchone()[0]

    def query(self, *, lo_ns: int | None = None, hi_ns: int | None = None,
              node: str | None = None, proto: str | None = None, host: str | None = None,
              port: int | None = None, limit: int | None = None,
              match: Callable[[Call], bool] | None = None) -> Iterator[Call]:
        """Calls in capture-time order; ``match`` filters decoded records (fields that have
        no column, e.g. workload names), and ``limit`` counts the calls that pass it."""
        sql = "SELECT record FROM calls WHERE 1=1"
        args: list[object] = []
        if lo_ns is not None:
            sql += " AND ts_ns >= ?"
            args.append(lo_ns)
        if hi_ns is not None:
            sql += " AND ts_ns < ?"
            args.append(hi_ns)
        if node:
            sql += " AND node = ?"
            args.append(node)
        if proto:
            sql += " AND proto = ?"
            args.append(proto)
        if host:
            sql += " AND (src_ip = ? OR dst_ip = ?)"
            args += [host, host]
        if port is not None:
            sql += " AND (src_port = ? OR dst_port = ?)"
            args += [port, port]
        sql += " ORDER BY ts_ns, ident"
        if limit and match is None:
            sql += " LIMIT ?"
            args.append(limit)
        n = 0
        for (rec,) in self.db.execute(sql, args):
            c = decode_row(rec)
            if match is not None:
                if not match(c):
                    continue
                n += 1
                if limit and n > limit:
                    return
            yield c


_STOP = object()


class StoreWriter:
    """Writes batches of calls to a :class:`CallStore` from its own thread.

    ``put()`` hands a batch over (blocking while ``depth`` batches wait: back-pressure, not
    unbounded memory); ``close()`` writes what is queued, stops the thread and closes the
    store. An error in the thread is raised again by the next ``put()`` or by ``close()``,
    so a failing store stops the command instead of losing calls quietly.
    """

    def __init__(self, store: CallStore, depth: int = 4) -> None:
        self.store = store
        self.added = 0
        self._q: queue.Queue[tuple[Sequence[Call], Sequence[bytes] | None] | object] = \
            queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rawcap-calls-store", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is _STOP:
                    return
                if self._error is not None:
                    continue  # failed: drain what is queued so put() never blocks forever
                calls, records = cast(tuple[Sequence[Call], Sequence[bytes] | None], item)
                self.added += self.store.add_rows(rows_of(calls, records))
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._q.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, calls: Sequence[Call], records: Sequence[bytes] | None = None) -> None:
        self._raise()
        if calls:
            self._q.put((calls, records))

    def sync(self) -> None:
        """Block until every batch put so far is written (or raise what writing it raised)."""
        self._q.join()
        self._raise()

    def close(self) -> None:
        """Write what is queued, then close the store; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join()
        self.store.close()
        self._raise()
