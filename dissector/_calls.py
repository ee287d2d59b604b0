"""Pairing parser events into call records, one session class per protocol.

A session is the ``StreamSink`` of one reassembled flow: it feeds each direction's bytes to
that direction's sans-I/O reader, drains events, and pairs requests with responses (HTTP/1
and Redis in order, HTTP/2 by stream id, DNS by query id). A parser error poisons only the
session it happened in (``dead``); calls still waiting are emitted as incomplete.
Sensitive header values are redacted here, before a call leaves the process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from schemas.calls import REDACTED, Call

from ._errors import Malformed, ParseError, Truncated
from ._sentinel import NEED_DATA
from .dns import DnsMessage, DnsTcpReader
from .http1 import (
    CLIENT,
    SERVER,
    EndOfMessage,
    HTTP1Reader,
    PyHTTP1Reader,
    Request,
    Response,
    Resync,
    State,
)
from .http2 import GoAway, Headers, HTTP2Reader, StreamData, StreamReset
from .postgres import PgReader, SslRequest, StatementPairer
from .redis import Command, Reply, RespReader

__all__ = ("DEFAULT_REDACT", "DnsPairer", "Endpoints", "Redactor", "SessionStats",
           "new_session")

_BODY: Final = State.BODY_LENGTH
DEFAULT_REDACT: Final = ("authorization", "cookie", "set-cookie", "proxy-authorization")

Emit = Callable[[Call], None]


class Redactor:
    """Replace the values of sensitive headers (case-insensitive names) with ``[redacted]``."""

    __slots__ = ("names", "safe")

    def __init__(self, extra: Iterable[str] = (), *, enabled: bool = True) -> None:
        self.names = frozenset(n.lower() for n in (*DEFAULT_REDACT, *extra)) if enabled \
            else frozenset()
        #: Header names as spelled on the wire that are known not to be sensitive: real
        #: traffic repeats a few dozen spellings, so most headers cost one set lookup.
        self.safe: set[str] = set()

    def __call__(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        names = self.names
        if not names:
            return headers
        safe = self.safe
        for k, _ in headers:
            if k not in safe:
                if k.lower() in names:
                    break
                if len(safe) < 4096:
                    safe.add(k)
        else:
            return headers
        return tuple((k, REDACTED) if k.lower() in names else (k, v) for k, v in headers)


class SessionStats:
    __slots__ = ("calls", "incomplete", "malformed", "poisoned_flows", "truncated")

    def __init__(self) -> None:
        self.malformed = 0
        self.truncated = 0
        self.calls = 0
        self.incomplete = 0
        self.poisoned_flows = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class Endpoints:
    """Who is client and who is server, formatted once per flow."""

    __slots__ = ("dst_ip", "dst_port", "node", "src_ip", "src_port", "transport")

    def __init__(self, node: str, transport: str, src_ip: str, src_port: int, dst_ip: str,
                 dst_port: int) -> None:
        self.node = node
        self.transport = transport
        self.src_ip = src_ip
        self.src_port = src_port
        self.dst_ip = dst_ip
        self.dst_port = dst_port

    def call(self, proto: str, **kw: Any) -> Call:
        return Call(proto, self.node, self.transport, self.src_ip, self.src_port, self.dst_ip,
                    self.dst_port, **kw)

    def http(self, proto: str, req_ts_ns: int, resp_ts_ns: int, method: str, path: str,
             host: str, status: int, req_bytes: int, resp_bytes: int, complete: bool,
             error: str, req_headers: tuple[tuple[str, str], ...],
             resp_headers: tuple[tuple[str, str], ...]) -> Call:
        """An HTTP call: :meth:`call` with these fields, built positionally (keywords
        into the 31-field ``Call`` cost ~2.5x as much: most of the time of an HTTP/1
        keep-alive call's pairing). ``tests/dissector/test_http1.py`` pins it to :meth:`call`."""
        return Call(proto, self.node, self.transport, self.src_ip, self.src_port, self.dst_ip,
                    self.dst_port, req_ts_ns, resp_ts_ns, _lat(req_ts_ns, resp_ts_ns), method,
                    path, host, status, -1, "", 0, -1, "", "", req_bytes, resp_bytes, complete,
                    error, req_headers, resp_headers)


def _lat(a: int, b: int) -> int:
    return b - a if a and b and b >= a else 0


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str:
    for k, v in headers:
        if k.lower() == name:
            return v
    return ""


class _Session:
    """Common plumbing: per-direction readers, error handling, emit."""

    proto = ""

    def __init__(self, ep: Endpoints, client_dir: int, emit: Emit, stats: SessionStats,
                 redact: Redactor) -> None:
        self.ep = ep
        self.client_dir = client_dir
        self.emit = emit
        self.stats = stats
        self.redact = redact
        self.dead = False
        self.readers: tuple[Any, Any] = (None, None)
        self.max_buffer = 4 << 20  # dissector.maxFlowBytes, set by the flow table

    def _out(self, call: Call) -> None:
        self.stats.calls += 1
        if not call.complete:
            self.stats.incomplete += 1
        self.emit(call)

    def on_data(self, direction: int, data: bytes, ts_ns: int) -> None:
        if self.dead:
            return
        r = self.readers[direction]
        r.feed(data, ts_ns)
        self._drain(direction, r)
        if len(r.buf) > self.max_buffer:
            self._poison(f"more than {self.max_buffer} bytes buffered for one message")

    def _poison(self, why: str) -> None:
        self.stats.malformed += 1
        self.stats.poisoned_flows += 1
        self.flush(f"malformed: {why}")
        self.dead = True
        for r in self.readers:
            r.buf.clear()

    def on_gap(self, direction: int, nbytes: int, ts_ns: int) -> None:
        if self.dead:
            return
        r = self.readers[direction]
        r.feed_gap(nbytes, ts_ns)
        self._drain(direction, r)

    def on_end(self, direction: int, ts_ns: int, reason: str) -> None:
        if self.dead:
            return
        dirs = (0, 1) if direction < 0 else (direction,)
        for d in dirs:
            r = self.readers[d]
            r.feed_eof()
            self._drain(d, r)
        if direction < 0 and not self.dead:
            self.flush(f"flow ended ({reason})")

    def _drain(self, direction: int, r: Any) -> None:
        is_client = direction == self.client_dir
        try:
            while True:
                ev = r.next_event()
                if ev is NEED_DATA:
                    return
                self.handle(is_client, ev)
        except Truncated as exc:
            self.stats.truncated += 1
            self.flush(str(exc))
        except (Malformed, ParseError) as exc:
            self.stats.malformed += 1
            self.stats.poisoned_flows += 1
            self.flush(f"malformed: {exc}")
            self.dead = True

    def handle(self, is_client: bool, ev: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def flush(self, why: str) -> None:
        """Emit whatever is still pending as incomplete calls."""


class HTTP1Session(_Session):
    proto = "http1"

    def __init__(self, *a: Any, max_body: int = 65536) -> None:
        super().__init__(*a)
        client, server = HTTP1Reader(CLIENT, max_body=max_body), HTTP1Reader(SERVER,
                                                                               max_body=max_body)
        self.readers = (client, server) if self.client_dir == 0 else (server, client)
        self.server_reader = server
        self.pending: deque[list[Any]] = deque()  # [Request, req_bytes]
        self.resp: Response | None = None
        self.cur_req: list[Any] | None = None
        #: the pure-Python reader (the compiled one does the mid-body case in feed() itself)
        self.py = type(client) is PyHTTP1Reader

    def on_data(self, direction: int, data: bytes, ts_ns: int) -> None:
        if self.dead:
            return
        r = self.readers[direction]
        if self.py and r.state is _BODY and len(data) < r.remaining and not r.buf:
            # Mid-body segment (most packets of a download): count it, nothing to parse.
            r.ts = ts_ns
            r.remaining -= len(data)
            r.body_len += len(data)
            if len(r.body) < r.max_body:
                r._keep_prefix(data)
            else:
                r.body_trunc = True
            return
        r.feed(data, ts_ns)
        self._drain(direction, r)
        if len(r.buf) > self.max_buffer:
            self._poison(f"more than {self.max_buffer} bytes buffered for one message")

    def _drain(self, direction: int, r: Any) -> None:
        # _Session._drain with the handler picked once per batch of events, not per event.
        on_event = self._client_event if direction == self.client_dir else self._server_event
        nxt = r.next_event
        try:
            while True:
                ev = nxt()
                if ev is NEED_DATA:
                    return
                on_event(ev)
        except Truncated as exc:
            self.stats.truncated += 1
            self.flush(str(exc))
        except (Malformed, ParseError) as exc:
            self.stats.malformed += 1
            self.stats.poisoned_flows += 1
            self.flush(f"malformed: {exc}")
            self.dead = True

    def handle(self, is_client: bool, ev: Any) -> None:
        (self._client_event if is_client else self._server_event)(ev)

    def _client_event(self, ev: Any) -> None:
        t = type(ev)
        if t is Request:
            self.cur_req = [ev, ev.head_bytes]
            self.pending.append(self.cur_req)
            self.server_reader.methods.append(ev.method)  # HTTP1Reader.expect
            if len(self.pending) > 1024:
                self._emit_req(self.pending.popleft(), None, 0, "no response (queue full)")
        elif t is EndOfMessage:
            cur = self.cur_req
            if cur is not None:
                cur[1] += ev.body_bytes
                self.cur_req = None

    def _server_event(self, ev: Any) -> None:
        t = type(ev)
        if t is Response:
            if ev.status >= 200 or ev.status == 101:
                self.resp = ev
            return
        if t is EndOfMessage:
            resp = self.resp
            if resp is None:
                return  # end of an informational (1xx) response
            self.resp = None
            size = resp.head_bytes + ev.body_bytes
            if self.pending:
                self._emit_req(self.pending.popleft(), resp, size, "", ev.ts_ns)
            else:
                self._out(self.ep.call(self.proto, resp_ts_ns=resp.ts_ns, status=resp.status,
                                       resp_bytes=size, complete=False,
                                       resp_headers=self.redact(resp.headers),
                                       error="response without request (capture started later)"))
        elif t is Resync and ev.lost_message and self.resp is not None:
            resp, self.resp = self.resp, None
            if self.pending:
                self._emit_req(self.pending.popleft(), resp, resp.head_bytes, "response body lost")

    def _emit_req(self, req: list[Any], resp: Response | None, resp_bytes: int, error: str,
                  end_ts: int = 0) -> None:
        r: Request = req[0]
        redact = self.redact
        if resp is None:
            self._out(self.ep.http(self.proto, r.ts_ns, 0, r.method, r.target,
                                   _header(r.headers, "host"), 0, req[1], resp_bytes, False,
                                   error, redact(r.headers), ()))
            return
        self._out(self.ep.http(self.proto, r.ts_ns, resp.ts_ns, r.method, r.target,
                               _header(r.headers, "host"), resp.status, req[1], resp_bytes,
                               not error, error, redact(r.headers), redact(resp.headers)))

    def flush(self, why: str) -> None:
        resp, self.resp = self.resp, None
        while self.pending:
            self._emit_req(self.pending.popleft(), resp, resp.head_bytes if resp else 0, why)
            resp = None


class HTTP2Session(_Session):
    proto = "http2"

    def __init__(self, *a: Any, max_body: int = 65536) -> None:
        super().__init__(*a)
        c, s = HTTP2Reader(client=True), HTTP2Reader(client=False)
        self.readers = (c, s) if self.client_dir == 0 else (s, c)
        self.streams: dict[int, dict[str, Any]] = {}

    def handle(self, is_client: bool, ev: Any) -> None:
        t = type(ev)
        if t is Headers:
            if is_client:
                st = self.streams.get(ev.stream_id)
                if st is None:
                    if len(self.streams) >= 4096:
                        self._finish(next(iter(self.streams)), "too many open streams")
                    self.streams[ev.stream_id] = {"req": ev, "req_bytes": ev.size,
                                                  "resp": None, "resp_bytes": 0,
                                                  "trailers": ()}
                else:
                    st["req_bytes"] += ev.size
                return
            st = self.streams.get(ev.stream_id)
            if st is None:
                return
            st["resp_bytes"] += ev.size
            if st["resp"] is None:
                status = _header(ev.headers, ":status")
                if status.startswith("1"):
                    return
                st["resp"] = ev
            else:
                st["trailers"] = ev.headers
            if ev.end_stream:
                self._finish(ev.stream_id, "")
        elif t is StreamData:
            st = self.streams.get(ev.stream_id)
            if st is None:
                return
            st["req_bytes" if is_client else "resp_bytes"] += ev.length
            if ev.end_stream and not is_client:
                self._finish(ev.stream_id, "")
        elif t is StreamReset:
            if ev.stream_id in self.streams:
                self._finish(ev.stream_id, f"stream reset (error {ev.error_code})")
        elif t is GoAway:
            pass

    def _finish(self, sid: int, error: str) -> None:
        st = self.streams.pop(sid)
        req: Headers = st["req"]
        resp: Headers | None = st["resp"]
        rh = resp.headers if resp else ()
        trailers = st["trailers"]
        ctype = _header(req.headers, "content-type")
        grpc = ctype.startswith("application/grpc")
        gs = _header(trailers, "grpc-status") or _header(rh, "grpc-status")
        status = _header(rh, ":status")
        self._out(self.ep.call(
            "grpc" if grpc else "http2", req_ts_ns=req.ts_ns,
            resp_ts_ns=resp.ts_ns if resp else 0,
            latency_ns=_lat(req.ts_ns, resp.ts_ns) if resp else 0,
            method=_header(req.headers, ":method"), path=_header(req.headers, ":path"),
            host=_header(req.headers, ":authority"),
            status=int(status) if status.isdigit() else 0,
            grpc_status=int(gs) if gs.isdigit() else -1,
            req_bytes=st["req_bytes"], resp_bytes=st["resp_bytes"],
            complete=resp is not None and not error, error=error,
            req_headers=self.redact(req.headers),
            resp_headers=self.redact(rh + tuple(trailers)),
            extra={"stream_id": sid}))

    def flush(self, why: str) -> None:
        for sid in list(self.streams):
            self._finish(sid, why)


class RedisSession(_Session):
    proto = "redis"

    def __init__(self, *a: Any, max_body: int = 0) -> None:
        super().__init__(*a)
        c, s = RespReader(client=True), RespReader(client=False)
        self.readers = (c, s) if self.client_dir == 0 else (s, c)
        self.pending: deque[Command] = deque()

    def handle(self, is_client: bool, ev: Any) -> None:
        if is_client:
            self.pending.append(ev)
            if len(self.pending) > 4096:
                self._emit(self.pending.popleft(), None, "no reply (queue full)")
        elif self.pending:
            self._emit(self.pending.popleft(), ev, "")

    def _emit(self, cmd: Command, rep: Reply | None, error: str) -> None:
        self._out(self.ep.call(
            "redis", req_ts_ns=cmd.ts_ns, resp_ts_ns=rep.ts_ns if rep else 0,
            latency_ns=_lat(cmd.ts_ns, rep.ts_ns) if rep else 0, command=cmd.name,
            key=cmd.key, req_bytes=cmd.size, resp_bytes=rep.size if rep else 0,
            status=0, complete=rep is not None and not error,
            error=error or (rep.error if rep else "")))

    def flush(self, why: str) -> None:
        while self.pending:
            self._emit(self.pending.popleft(), None, why)


class DnsPairer:
    """Pairs DNS queries and responses by (client, server, id); bounded."""

    __slots__ = ("emit", "max_pending", "pending", "stats")

    def __init__(self, emit: Emit, stats: SessionStats, max_pending: int = 65536) -> None:
        self.pending: dict[tuple[Any, ...], tuple[DnsMessage, Endpoints]] = {}
        self.emit = emit
        self.stats = stats
        self.max_pending = max_pending

    def message(self, msg: DnsMessage, ep: Endpoints, flow_key: tuple[Any, ...]) -> None:
        key = (*flow_key, msg.id)
        if not msg.is_response:
            old = self.pending.pop(key, None)
            if old is not None:
                self._out(old[0], None, old[1], "query repeated without response")
            if len(self.pending) >= self.max_pending:
                k = next(iter(self.pending))
                q, e = self.pending.pop(k)
                self._out(q, None, e, "no response (pending table full)")
            self.pending[key] = (msg, ep)
            return
        got = self.pending.pop(key, None)
        if got is None:
            self._out(None, msg, ep, "response without query")
        else:
            self._out(got[0], msg, got[1], "")

    def _out(self, q: DnsMessage | None, r: DnsMessage | None, ep: Endpoints, error: str) -> None:
        m = q or r
        assert m is not None
        qn = m.questions[0] if m.questions else None
        self.stats.calls += 1
        complete = q is not None and r is not None
        if not complete:
            self.stats.incomplete += 1
        self.emit(ep.call(
            "dns", req_ts_ns=q.ts_ns if q else 0, resp_ts_ns=r.ts_ns if r else 0,
            latency_ns=_lat(q.ts_ns, r.ts_ns) if q and r else 0,
            qname=qn.name if qn else "", qtype=qn.qtype if qn else 0,
            rcode=r.rcode if r else -1, req_bytes=q.size if q else 0,
            resp_bytes=r.size if r else 0, complete=complete, error=error,
            extra={"answers": r.answers} if r else {}))

    def flush(self) -> None:
        for q, ep in list(self.pending.values()):
            self._out(q, None, ep, "no response")
        self.pending.clear()


class DnsTcpSession(_Session):
    proto = "dns"

    def __init__(self, *a: Any, max_body: int = 0, pairer: DnsPairer | None = None,
                 flow_key: tuple[Any, ...] = ()) -> None:
        super().__init__(*a)
        self.readers = (DnsTcpReader(), DnsTcpReader())
        self.pairer = pairer
        self.flow_key = flow_key

    def handle(self, is_client: bool, ev: Any) -> None:
        if self.pairer is not None:
            self.pairer.message(ev, self.ep, self.flow_key)


class PostgresSession(_Session):
    """One call per statement (``dissector.postgres.StatementPairer`` pairs them)."""

    proto = "postgres"

    def __init__(self, *a: Any, max_body: int = 0) -> None:
        super().__init__(*a)
        c, s = PgReader(client=True), PgReader(client=False)
        self.readers = (c, s) if self.client_dir == 0 else (s, c)
        self.server_reader = s
        self.pairer = StatementPairer(
            lambda kw: self._out(self.ep.call("postgres", **kw)))

    def handle(self, is_client: bool, ev: Any) -> None:
        if not is_client:
            self.pairer.server(ev)
        elif type(ev) is SslRequest:
            self.server_reader.expect_ssl_reply()
        else:
            self.pairer.client(ev)

    def flush(self, why: str) -> None:
        self.pairer.flush(why)


SESSIONS: Final[dict[str, type[_Session]]] = {
    "postgres": PostgresSession,
    "http1": HTTP1Session,
    "http2": HTTP2Session,
    "redis": RedisSession,
    "dns": DnsTcpSession,
}


def new_session(proto: str, ep: Endpoints, client_dir: int, emit: Emit, stats: SessionStats,
                redact: Redactor, **kw: Any) -> _Session:
    cls = SESSIONS[proto]
    if cls is not DnsTcpSession:
        kw.pop("pairer", None)
        kw.pop("flow_key", None)
    return cls(ep, client_dir, emit, stats, redact, **kw)
