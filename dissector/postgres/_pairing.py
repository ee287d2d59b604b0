"""Statements paired with their results: PostgreSQL events in, call fields out.

One call per statement the server ran or refused:

* a simple Query gives one call per statement it holds (one per CommandComplete, or the
  ErrorResponse that stops it, or the EmptyQueryResponse of an empty string); the statements
  after an error were never run and give no call;
* an extended-protocol Execute gives one call; the Executes of a Sync batch that the server
  skipped after an error give incomplete calls.

``req_bytes``: the Query message (carried by its first statement), or the Parse/Bind/
Describe/Close/Flush/Execute messages since the previous Execute or Sync, plus the COPY data
the client streamed for the statement. ``resp_bytes``: every server message from the one
after the previous statement's result through this statement's CommandComplete/
ErrorResponse/EmptyQueryResponse/PortalSuspended, plus the ReadyForQuery that ends the batch
when this is the batch's last answered statement. A batch without Execute (a statement
prepared with Parse + Sync) is no call. The command word is the first word of the server's
tag (``COMMIT`` for ``END;``), else of the SQL; ``rows`` is the tag's row count, else the
DataRows received.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final

from ._events import (
    CommandComplete,
    CopyIn,
    EmptyQuery,
    ErrorResponse,
    PortalSuspended,
    Query,
    ReadyForQuery,
    Startup,
    Sync,
)
from ._sql import first_keyword, statement_spans

__all__ = ("MAX_PENDING", "StatementPairer")

MAX_PENDING: Final = 4096
Result = CommandComplete | ErrorResponse | EmptyQuery | PortalSuspended
Out = Callable[[dict[str, Any]], None]


class _Request:
    """A Query or Execute the server has not finished answering."""

    __slots__ = ("batch", "index", "query", "req_bytes", "results", "spans")

    def __init__(self, query: Query, batch: int, index: int) -> None:
        self.query = query
        self.batch = batch  # number of the client batch (Query or Sync) it belongs to
        self.index = index  # Execute: its place in the Sync batch (1-based)
        self.req_bytes = query.size
        self.results = 0  # Query: statements answered so far
        self.spans: list[tuple[int, int]] | None = None

    def statements(self) -> list[tuple[int, int]]:
        if self.spans is None:
            self.spans = statement_spans(self.query.sql)
        return self.spans


def _rows(tag: str, counted: int) -> int:
    n = tag.rpartition(" ")[2]
    return int(n) if n.isascii() and n.isdigit() else counted


def _lat(a: int, b: int) -> int:
    return b - a if a and b and b >= a else 0


class StatementPairer:
    """Feed client events to :meth:`client`, server events to :meth:`server`; each call's
    fields (``schemas.calls.Call`` keywords) go to ``out``. A call waits for the next result
    or the ReadyForQuery before it leaves, since that may add to its ``resp_bytes``."""

    __slots__ = ("batches", "done", "held", "out", "pending", "startup", "unsynced")

    def __init__(self, out: Out) -> None:
        self.out = out
        self.pending: deque[_Request] = deque()
        self.batches = 0  # batches the client closed (Query or Sync)
        self.done = 0  # batches the server closed (ReadyForQuery)
        self.unsynced = 0  # Executes since the last Sync
        self.held: tuple[_Request, int, Result, int] | None = None  # answered, not out
        self.startup = False  # the server's next ReadyForQuery ends the login

    def client(self, ev: Any) -> None:
        t = type(ev)
        if t is Query:
            if ev.extended:
                self.unsynced += 1
                self.pending.append(_Request(ev, self.batches, self.unsynced))
            else:
                self.pending.append(_Request(ev, self.batches, 1))
                self.batches += 1
                self.unsynced = 0
            if len(self.pending) > MAX_PENDING:
                self._unanswered(self.pending.popleft(), "no result (queue full)")
        elif t is Sync:
            self.batches += 1
            self.unsynced = 0
        elif t is CopyIn:
            if self.pending:
                self.pending[0].req_bytes += ev.size
        elif t is Startup:
            self.startup = True

    def server(self, ev: Any) -> None:
        if type(ev) is not ReadyForQuery:
            self._result(ev)  # CommandComplete, ErrorResponse, EmptyQuery, PortalSuspended
        else:
            if self.startup:
                self.startup = False
                return
            self._release(ev.size)
            if self.done < self.batches:
                pending = self.pending
                while pending and pending[0].batch == self.done:
                    r = pending.popleft()
                    if r.query.extended:
                        self._unanswered(r, "no result (skipped after an error)")
                    elif not r.results:
                        self._unanswered(r, "no result")
                self.done += 1

    def _result(self, ev: Result) -> None:
        pending = self.pending
        if not pending or pending[0].batch != self.done:
            return  # an answer to no statement (a Parse-only batch's error)
        r = pending[0]
        if r.query.extended:
            pending.popleft()
            index = r.index
        else:
            r.results += 1  # before the release: a second result marks a multi-statement
            index = r.results
            if type(ev) is ErrorResponse:
                pending.popleft()  # the server runs none of the Query's later statements
        self._release(0)
        self.held = (r, index, ev, r.req_bytes)
        r.req_bytes = 0  # COPY data streamed from now on belongs to a later statement

    def _release(self, extra: int) -> None:
        """Emit the held call, ``extra`` more response bytes counted to it."""
        held = self.held
        if held is None:
            return
        self.held = None
        r, index, ev, req = held
        q = r.query
        sql = q.sql
        error = sqlstate = tag = ""
        rows = pos = 0
        if isinstance(ev, CommandComplete):
            tag = ev.tag
            rows = _rows(tag, ev.rows)
        elif isinstance(ev, ErrorResponse):
            sqlstate, error, rows, pos = ev.code, f"{ev.code} {ev.message}", ev.rows, ev.position
        elif isinstance(ev, PortalSuspended):
            rows = ev.rows
        if not q.extended and (r.results > 1 or sqlstate):
            spans = r.statements()
            if len(spans) > 1:
                if pos:  # a syntax error stops the Query before any statement runs
                    at = next((k for k, (a, b) in enumerate(spans) if a < pos <= b + 1), -1)
                    index = max(index, at + 1)
                if index <= len(spans):
                    a, b = spans[index - 1]
                    sql = sql[a:b]
        word = tag.split(" ", 1)[0] if tag else first_keyword(sql)
        self.out({
            "req_ts_ns": q.ts_ns, "resp_ts_ns": ev.ts_ns, "latency_ns": _lat(q.ts_ns, ev.ts_ns),
            "command": word, "key": sql[:256], "req_bytes": req, "resp_bytes": ev.size + extra,
            "complete": True, "error": error,
            "extra": {"tag": tag, "rows": rows, "sqlstate": sqlstate, "extended": q.extended,
                      "statement": index}})

    def _unanswered(self, r: _Request, why: str) -> None:
        q = r.query
        req = r.req_bytes
        r.req_bytes = 0
        self.out({
            "req_ts_ns": q.ts_ns, "command": first_keyword(q.sql), "key": q.sql[:256],
            "req_bytes": req, "complete": False, "error": why,
            "extra": {"tag": "", "rows": 0, "sqlstate": "", "extended": q.extended,
                      "statement": r.index if q.extended else r.results + 1}})

    def flush(self, why: str) -> None:
        """The flow ended: the held call, then every request still unanswered."""
        self._release(0)
        while self.pending:
            r = self.pending.popleft()
            if r.query.extended or not r.results:
                self._unanswered(r, why)
