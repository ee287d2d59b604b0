"""The local calls store: sqlite, bounded by ``tap.capture.dbMaxSize``, oldest evicted.

Each call is one row: indexed columns for what ``rawcap calls`` filters on, plus the full
msgpack record. After each committed batch the store checks its size (pages in use, not the
file size, which sqlite only shrinks on VACUUM) and deletes the oldest rows (by capture
time) until it is back under 90 % of the budget; freed pages are reused by later inserts, so
the file stops growing at about the budget.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from schemas.calls import Call, decode_call, encode_call

__all__ = ("CallStore",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts_ns INTEGER NOT NULL,
  node TEXT NOT NULL,
  proto TEXT NOT NULL,
  src_ip TEXT, src_port INTEGER, dst_ip TEXT, dst_port INTEGER,
  uid TEXT UNIQUE,
  record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts_ns);
"""


def _uid(c: Call) -> str:
    """Identity of a call, so replaying the same range twice does not duplicate rows
    (HTTP/2: its stream; PostgreSQL: its statement's place in the Query or Sync batch, since
    the statements of one Query share their request and often their response segment)."""
    x = c.extra
    return (f"{c.node}|{c.transport}|{c.src_ip}|{c.src_port}|{c.dst_ip}|{c.dst_port}|"
            f"{c.req_ts_ns}|{c.resp_ts_ns}|{c.proto}|{x.get('stream_id', x.get('statement', ''))}")


class CallStore:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.executescript(_SCHEMA)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        self.evicted = 0

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
        rows = [(c.ts_ns, c.node, c.proto, c.src_ip, c.src_port, c.dst_ip, c.dst_port, _uid(c),
                 encode_call(c)) for c in calls]
        if not rows:
            return 0
        with self.db:
            cur = self.db.executemany(
                "INSERT OR IGNORE INTO calls(ts_ns,node,proto,src_ip,src_port,dst_ip,dst_port,"
                "uid,record) VALUES (?,?,?,?,?,?,?,?,?)", rows)
            added = cur.rowcount
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
                                "ORDER BY ts_ns, id LIMIT ?)", (n,))
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
        sql += " ORDER BY ts_ns, id"
        if limit and match is None:
            sql += " LIMIT ?"
            args.append(limit)
        n = 0
        for (rec,) in self.db.execute(sql, args):
            c = decode_call(rec)
            if match is not None:
                if not match(c):
                    continue
                n += 1
                if limit and n > limit:
                    return
            yield c
