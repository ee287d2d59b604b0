"""The local calls store: sqlite, bounded by ``tap.capture.dbMaxSize``, oldest evicted.

Calls are stored in **blocks**: one row per node and flush of the dissector (up to a few
thousand calls), holding the flushed calls as one ``rawcap.calls`` version-2 record
(``schemas.calls``: the very bytes that are published), with the block's node, time span
(``ts_lo``..``ts_hi``, capture time of the calls' requests, else responses), call count, and
the distinct addresses and protocols of its calls (space-delimited, for ``instr``). A flush
costs one insert, not one per call (a row per call made the store most of the dissector's
time: ~6 us of sqlite per call).

Queries (:meth:`CallStore.query`) select the blocks whose span meets the window (and whose
address/protocol lists hold ``--host``/``--proto``), unpack them, build calls only for the
rows that pass every filter, and merge the blocks into capture-time order (blocks come in
``ts_lo`` order; a call is released once no later block can hold an earlier one).

Identity: a call is (node, transport, client and server address and port, request and
response time, protocol, HTTP/2 stream id, PostgreSQL statement: the statements of one Query
share their request and often their response segment). Before a block is written, the calls
of the node's stored blocks that overlap its span are looked up, and calls already stored are
dropped: replaying a range (or an overlapping one) adds no duplicate. In a first run the
lookup usually meets the previous flush's block only.

Bounded: after each write, when the pages in use (not the file size: sqlite reuses freed
pages) exceed the budget, the blocks that end first are deleted until 90 % of it is left.
A new store of a budget of at least 1024 pages of 64 KiB uses that page size (a block spans
a few pages instead of ~150), its write-ahead log checkpointed every 8 MiB as with the
default 4 KiB pages.

:class:`StoreWriter` runs :meth:`CallStore.add` on a thread of its own, fed through a
bounded queue (sqlite releases the GIL while it writes: the dissector goes on meanwhile).

A store of the first layout (one row per call, ``uid TEXT UNIQUE``) is converted in place
when opened.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

from schemas.calls import FIELDS, Call, call_from_row, decode_call, encode_calls, record_rows

from ._rows import rows as call_rows

__all__ = ("CallStore", "StoreWriter")

log = logging.getLogger("rawcap.dissector")

#: ``PRAGMA user_version`` of this layout (0: the first one, one row per call)
LAYOUT = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS blocks (
         id INTEGER PRIMARY KEY,
         node TEXT NOT NULL,
         ts_lo INTEGER NOT NULL,
         ts_hi INTEGER NOT NULL,
         n INTEGER NOT NULL,
         hosts TEXT NOT NULL,
         protos TEXT NOT NULL,
         data BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS blocks_hi ON blocks(ts_hi)",
    "CREATE INDEX IF NOT EXISTS blocks_node_hi ON blocks(node, ts_hi)",
)
_IDX = {name: FIELDS.index(name) for name in (
    "proto", "transport", "src_ip", "src_port", "dst_ip", "dst_port", "req_ts_ns", "resp_ts_ns",
    "extra")}

Ident = tuple[Any, ...]

#: pages of a new store whose budget holds at least 1024 of them (sqlite's default: 4 KiB)
BIG_PAGE = 65536
#: write-ahead log bytes between checkpoints
WAL_BYTES = 8 << 20

_node, _proto, _src_ip, _dst_ip = (attrgetter(n) for n in ("node", "proto", "src_ip", "dst_ip"))
_req_ts = attrgetter("req_ts_ns")


def _ident(c: Call) -> Ident:
    x = c.extra
    return (c.req_ts_ns, c.resp_ts_ns, c.src_port, c.dst_port, c.src_ip, c.dst_ip, c.proto,
            c.transport, x.get("stream_id"), x.get("statement"))


class _Cols:
    """Where the fields a store reads sit in the rows of one record."""

    __slots__ = ("dip", "dport", "extra", "proto", "req", "resp", "sip", "sport", "transport")

    def __init__(self, names: Sequence[str]) -> None:
        idx = _IDX if names is FIELDS else {n: i for i, n in enumerate(names)}

        def at(name: str) -> int:
            i = idx.get(name)
            if i is None:
                raise ValueError(f"stored call record without field {name!r}")
            return i

        self.proto, self.transport, self.sip, self.sport = (at("proto"), at("transport"),
                                                            at("src_ip"), at("src_port"))
        self.dip, self.dport, self.req, self.resp = (at("dst_ip"), at("dst_port"),
                                                     at("req_ts_ns"), at("resp_ts_ns"))
        self.extra = idx.get("extra", -1)

    def ident(self, row: list[Any]) -> Ident:
        x = row[self.extra] if self.extra >= 0 else None
        if not isinstance(x, dict):
            x = {}
        return (row[self.req], row[self.resp], row[self.sport], row[self.dport], row[self.sip],
                row[self.dip], row[self.proto], row[self.transport], x.get("stream_id"),
                x.get("statement"))


class CallStore:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        if max_bytes >= 1024 * BIG_PAGE:
            self.db.execute(f"PRAGMA page_size={BIG_PAGE}")  # a new file only (else no-op)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: no fsync per commit; a crash keeps the file consistent and may lose
        # the last blocks, which a replay of the range brings back (raw packets are the truth)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        self.db.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_BYTES // self.page_size)}")
        self.evicted = 0
        self._open_layout()

    def _open_layout(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(calls)")}
        with self.db:
            for stmt in _SCHEMA:
                self.db.execute(stmt)
        if version < LAYOUT and "uid" in cols:
            self._convert_v1()
        self.db.execute(f"PRAGMA user_version={LAYOUT}")

    def _convert_v1(self) -> None:
        """Calls of the first layout (a row per call) into blocks, then the old table goes."""
        n = self.db.execute("SELECT count(*) FROM calls").fetchone()[0]
        log.info("converting the calls store to blocks", extra={"path": str(self.path),
                                                                "calls": n})
        last = -1
        while recs := self.db.execute("SELECT id, record FROM calls WHERE id > ? ORDER BY id "
                                      "LIMIT 2000", (last,)).fetchall():
            last = recs[-1][0]
            self.add([decode_call(r[1]) for r in recs], enforce=False)
        with self.db:
            self.db.execute("DROP TABLE calls")
        self.db.execute("VACUUM")
        self._enforce()

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

    def add(self, calls: Sequence[Call], rows: Sequence[bytes] | None = None, *,
            enforce: bool = True) -> int:
        """Store calls (one block per node, one transaction); ``rows`` are their
        ``call_rows`` when the caller has them (they are published too). Returns how many
        were new."""
        if not calls:
            return 0
        if rows is None:
            rows = call_rows(calls)
        nodes = list(map(_node, calls))
        added = 0
        with self.db:
            if nodes.count(nodes[0]) == len(nodes):  # one node (as a range or pcap has)
                added = self._add_block(nodes[0], list(calls), list(rows))
            else:
                by_node: dict[str, list[int]] = {}
                for i, node in enumerate(nodes):
                    by_node.setdefault(node, []).append(i)
                for node, idx in by_node.items():
                    added += self._add_block(node, [calls[i] for i in idx],
                                             [rows[i] for i in idx])
        if enforce:
            self._enforce()
        return added

    def _add_block(self, node: str, calls: list[Call], rows: list[bytes]) -> int:
        tss = list(map(_req_ts, calls))
        if 0 in tss:  # no request: the response's time
            tss = [c.req_ts_ns or c.resp_ts_ns for c in calls]
        seen = self._stored(node, min(tss), max(tss))
        if seen:
            times = {k[:2] for k in seen}  # most calls differ from every stored one in these
            keep = [i for i, c in enumerate(calls)
                    if (c.req_ts_ns, c.resp_ts_ns) not in times or _ident(c) not in seen]
            if len(keep) < len(calls):
                calls, rows, tss = ([calls[i] for i in keep], [rows[i] for i in keep],
                                    [tss[i] for i in keep])
        if not calls:
            return 0
        hosts = set(map(_src_ip, calls))
        hosts.update(map(_dst_ip, calls))
        protos = set(map(_proto, calls))
        self.db.execute(
            "INSERT INTO blocks(node,ts_lo,ts_hi,n,hosts,protos,data) VALUES (?,?,?,?,?,?,?)",
            (node, min(tss), max(tss), len(calls), f" {' '.join(sorted(hosts))} ",
             f" {' '.join(sorted(protos))} ", encode_calls(rows)))
        return len(calls)

    def _stored(self, node: str, lo: int, hi: int) -> set[Ident]:
        """Identities of the node's stored calls with a time in ``[lo, hi]``."""
        seen: set[Ident] = set()
        for (data,) in self.db.execute(
                "SELECT data FROM blocks WHERE node = ? AND ts_hi >= ? AND ts_lo <= ?",
                (node, lo, hi)):
            names, rows = record_rows(data)
            cols = _Cols(names)
            for row in rows:
                ts = row[cols.req] or row[cols.resp]
                if lo <= ts <= hi:
                    seen.add(cols.ident(row))
        return seen

    def _enforce(self) -> None:
        used = self.used_bytes()
        if used <= self.max_bytes:
            return
        target = int(self.max_bytes * 0.9)
        while used > target:
            blocks = self.db.execute("SELECT count(*) FROM blocks").fetchone()[0]
            if not blocks:
                break
            # Blocks are roughly the same size: delete the share that brings us under target.
            k = max(1, int(blocks * (used - target) / used) + 1)
            with self.db:
                gone = self.db.execute(
                    "SELECT coalesce(sum(n), 0) FROM (SELECT n FROM blocks "
                    "ORDER BY ts_hi, id LIMIT ?)", (k,)).fetchone()[0]
                self.db.execute("DELETE FROM blocks WHERE id IN (SELECT id FROM blocks "
                                "ORDER BY ts_hi, id LIMIT ?)", (k,))
            self.evicted += gone
            used = self.used_bytes()

    def count(self) -> int:
        return self.db.execute("SELECT coalesce(sum(n), 0) FROM blocks").fetchone()[0]

    def query(self, *, lo_ns: int | None = None, hi_ns: int | None = None,
              node: str | None = None, proto: str | None = None, host: str | None = None,
              port: int | None = None, limit: int | None = None,
              match: Callable[[Call], bool] | None = None) -> Iterator[Call]:
        """Calls in capture-time order (ties: the order they were stored); ``match`` filters
        calls on fields that have no column (e.g. workload names); ``limit`` counts the
        calls that pass every filter."""
        sql = "SELECT id, ts_lo, data FROM blocks WHERE 1=1"
        args: list[object] = []
        if lo_ns is not None:
            sql += " AND ts_hi >= ?"
            args.append(lo_ns)
        if hi_ns is not None:
            sql += " AND ts_lo < ?"
            args.append(hi_ns)
        if node:
            sql += " AND node = ?"
            args.append(node)
        if proto:
            sql += " AND instr(protos, ?) > 0"
            args.append(f" {proto} ")
        if host:
            sql += " AND instr(hosts, ?) > 0"
            args.append(f" {host} ")
        sql += " ORDER BY ts_lo, id"
        pending: list[tuple[int, int, int, Call]] = []
        n = 0
        for bid, ts_lo, data in self.db.execute(sql, args):
            while pending and pending[0][0] < ts_lo:  # no later block holds an earlier call
                yield heapq.heappop(pending)[3]
                n += 1
                if limit and n >= limit:
                    return
            for ts, k, c in self._matching(data, lo_ns, hi_ns, proto, host, port, match):
                heapq.heappush(pending, (ts, bid, k, c))
        while pending:
            yield heapq.heappop(pending)[3]
            n += 1
            if limit and n >= limit:
                return

    @staticmethod
    def _matching(data: bytes, lo: int | None, hi: int | None, proto: str | None,
                  host: str | None, port: int | None,
                  match: Callable[[Call], bool] | None) -> Iterator[tuple[int, int, Call]]:
        names, rows = record_rows(data)
        cols = _Cols(names)
        req, resp, sip, dip, sport, dport = (cols.req, cols.resp, cols.sip, cols.dip,
                                             cols.sport, cols.dport)
        for k, row in enumerate(rows):
            ts = row[req] or row[resp]
            if (lo is not None and ts < lo) or (hi is not None and ts >= hi):
                continue
            if proto and row[cols.proto] != proto:
                continue
            if host and row[sip] != host and row[dip] != host:
                continue
            if port is not None and row[sport] != port and row[dport] != port:
                continue
            c = call_from_row(row, names)
            if match is None or match(c):
                yield ts, k, c


class StoreWriter:
    """A :class:`CallStore` written from a thread of its own: :meth:`add` queues a flush and
    returns (it waits only while ``depth`` flushes are queued, so memory stays bounded);
    :meth:`sync` returns once every queued flush is stored; :meth:`close` stores what is
    queued, then closes the store. A write that failed is raised by the next :meth:`add`,
    :meth:`sync` or :meth:`close` (once)."""

    def __init__(self, store: CallStore, depth: int = 4) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[Sequence[Call], Sequence[bytes] | None] | None] = \
            queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rawcap-calls-store",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.store.add(*item)
            except BaseException as exc:  # handed to the thread that writes (see _raise)
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        exc, self._error = self._error, None
        if exc is not None:
            raise exc

    def add(self, calls: Sequence[Call], rows: Sequence[bytes] | None = None) -> None:
        """Queue calls for :meth:`CallStore.add` (``rows``: their ``call_rows``)."""
        self._raise()
        self._queue.put((calls, rows))

    def sync(self) -> None:
        """Wait until every queued call is stored."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Store what is queued and close the store; idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
            self.store.close()
        self._raise()
