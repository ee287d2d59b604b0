"""Records on ``rawcap.calls``: one API call (request paired with its response) per record.

Value: a msgpack map (``use_bin_type=True``) with a format version ``v`` = 1; key: the node
name (so one node's calls stay in order in one partition). Fields a protocol does not have
are empty strings / 0 rather than absent, so every consumer reads the same shape.
Workload fields (``src_workload``/``dst_workload`` and namespaces) are filled by the dissector
from ``rawcap.k8s`` as of the request time, and stay empty when the cluster layer is unknown.

- ``proto``: ``http1``, ``http2``, ``grpc``, ``dns``, ``redis``, ``postgres``
- ``transport``: ``tcp`` or ``udp``; ``src``/``dst``: client and server address and port
- ``req_ts_ns``/``resp_ts_ns``: capture timestamps of request and response (0: missing);
  ``latency_ns`` = resp - req when both exist
- ``method``/``path``/``status``/``host`` (HTTP: status code; gRPC: ``grpc_status`` too),
  ``qname``/``qtype``/``rcode`` (DNS), ``command``/``key`` (Redis; PostgreSQL: one call per
  statement, the command word of the server's tag and the statement, with tag, rows,
  sqlstate, extended and the statement's place in its batch in ``extra``) and ``error``
  (text)
- ``req_bytes``/``resp_bytes``: message sizes (head + body), ``headers``: request and response
  headers with sensitive values replaced by ``[redacted]``
- ``complete``: false when the request or the response was lost (flow ended, gap)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final

import msgpack

__all__ = ("CALLS_VERSION", "REDACTED", "Call", "decode_call", "encode_call")

CALLS_VERSION: Final = 1
REDACTED: Final = "[redacted]"


@dataclass(slots=True)
class Call:
    """One call. Not frozen on purpose: a frozen dataclass of this many fields costs one
    ``object.__setattr__`` per field to build, once per call the dissector makes; treat it as
    a value and derive changed copies with :meth:`with_`."""

    proto: str
    node: str = ""
    transport: str = "tcp"
    src_ip: str = ""
    src_port: int = 0
    dst_ip: str = ""
    dst_port: int = 0
    req_ts_ns: int = 0
    resp_ts_ns: int = 0
    latency_ns: int = 0
    method: str = ""
    path: str = ""
    host: str = ""
    status: int = 0
    grpc_status: int = -1
    qname: str = ""
    qtype: int = 0
    rcode: int = -1
    command: str = ""
    key: str = ""
    req_bytes: int = 0
    resp_bytes: int = 0
    complete: bool = True
    error: str = ""
    req_headers: tuple[tuple[str, str], ...] = ()
    resp_headers: tuple[tuple[str, str], ...] = ()
    src_workload: str = ""
    dst_workload: str = ""
    src_namespace: str = ""
    dst_namespace: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.proto:
            raise ValueError("call without protocol")

    @property
    def ts_ns(self) -> int:
        return self.req_ts_ns or self.resp_ts_ns

    def summary(self) -> str:
        """One human line: what a terminal user wants to see first."""
        if self.proto == "dns":
            what = f"{self.qname} type={self.qtype} rcode={self.rcode}"
        elif self.proto == "redis":
            what = f"{self.command} {self.key}".rstrip()
        elif self.proto == "postgres":
            what = f"{self.key} -> {self.extra.get('tag') or self.error or '?'}"
        else:
            what = f"{self.method} {self.path} -> {self.status}"
            if self.grpc_status >= 0:
                what += f" grpc-status={self.grpc_status}"
        return what

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["req_headers"] = [list(h) for h in self.req_headers]
        d["resp_headers"] = [list(h) for h in self.resp_headers]
        return d

    def with_(self, **changes: Any) -> Call:
        return replace(self, **changes)


_FIELDS: Final = tuple(f.name for f in fields(Call))


def encode_call(call: Call) -> bytes:
    d = call.as_dict()
    d["v"] = CALLS_VERSION
    return msgpack.packb(d, use_bin_type=True)


def decode_call(value: bytes) -> Call:
    """Decode a ``rawcap.calls`` value; raises ValueError naming what is wrong."""
    try:
        d = msgpack.unpackb(value, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"call record is not msgpack: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError("call record is not a map")
    v = d.pop("v", None)
    if v != CALLS_VERSION:
        raise ValueError(f"call record version {v!r} is not {CALLS_VERSION}")
    kw = {k: d[k] for k in _FIELDS if k in d}
    for h in ("req_headers", "resp_headers"):
        if h in kw:
            kw[h] = tuple((str(a), str(b)) for a, b in kw[h])
    try:
        return Call(**kw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad call record: {exc}") from None
