"""Records on ``rawcap.calls``: API calls (a request paired with its response).

Value (version 2, what the dissector writes): a msgpack map (``use_bin_type=True``)
``{"v": 2, "fields": [name, ...], "calls": [[value, ...], ...]}``: the field names once, then
one array per call holding its values in that order (headers as arrays of ``[name, value]``).
Key: the node name (so one node's calls stay in order in one partition); all calls of a
record share it, and the UTC hour of their time (``Call.ts_ns``: the archive's Parquet tables
file a record under one hour). A record holds up to a few thousand calls (one flush of the dissector, at
most ``CALLS_RECORD_BYTES``). Readers map values by the names in ``fields`` (a name they do
not know is ignored, one they miss takes its default), so fields can be added.

Version 1 (written before 2026-12-03, still read by :func:`decode_calls`): one call per
record, a msgpack map of every field by name plus ``v`` = 1 (:func:`encode_call`).

Fields a protocol does not have are empty strings / 0 rather than absent, so every consumer
reads the same shape.
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

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Any, Final

import msgpack

__all__ = ("CALLS_RECORD_BYTES", "CALLS_VERSION", "FIELDS", "REDACTED", "Call",
           "call_from_row", "call_rows", "decode_call", "decode_calls", "decode_row",
           "encode_call", "encode_calls", "record_rows")

#: the version the dissector writes (2: many calls per record); 1 is still read
CALLS_VERSION: Final = 2
#: a version-2 record is cut before it grows past this (the topic takes the broker's 1 MiB)
CALLS_RECORD_BYTES: Final = 512 * 1024
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
        """Every field by name, in declaration order; headers as lists of ``[name, value]``
        pairs, ``extra`` a copy (its values are scalars)."""
        d = dict(zip(FIELDS, _values(self), strict=True))
        d["req_headers"] = [list(h) for h in self.req_headers]
        d["resp_headers"] = [list(h) for h in self.resp_headers]
        d["extra"] = dict(self.extra)
        return d

    def with_(self, **changes: Any) -> Call:
        return replace(self, **changes)


#: every field of a call, in declaration order (the order of a version-2 row)
FIELDS: Final = tuple(f.name for f in fields(Call))
#: all field values of a call in declaration order, in one C-level call
_values: Final = attrgetter(*FIELDS)
_DEFAULTS: Final = {f.name: f.default for f in fields(Call)}


def encode_call(call: Call) -> bytes:
    """One call as a version-1 record: a msgpack map of every field (declaration order,
    headers as arrays of pairs) and ``v`` = 1. Built straight from the attributes (no
    ``dataclasses.asdict``, which deep-copies: ~25x slower); the bytes are those of
    ``msgpack.packb({**call.as_dict(), "v": 1})`` (``tests/schemas/test_calls.py``)."""
    d = dict(zip(FIELDS, _values(call), strict=True))
    d["v"] = 1
    return msgpack.packb(d, use_bin_type=True)


def call_rows(calls: Sequence[Call]) -> list[bytes]:
    """Each call as a version-2 row: the msgpack array of its values in ``FIELDS`` order.
    The same bytes serve the local store and, joined by :func:`encode_calls`, Kafka."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return [pack(_values(c)) for c in calls]


_V2_PREFIX: Final = (b"\x83" + msgpack.packb("v") + msgpack.packb(2) + msgpack.packb("fields")
                     + msgpack.packb(list(FIELDS)) + msgpack.packb("calls"))


def encode_calls(rows: Sequence[bytes]) -> bytes:
    """A version-2 record of ``rows`` (from :func:`call_rows`): the msgpack bytes of
    ``{"v": 2, "fields": FIELDS, "calls": rows}``, the rows copied in, not packed again."""
    n = len(rows)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return b"".join((_V2_PREFIX, head, *rows))


def _call(kw: dict[str, Any]) -> Call:
    for h in ("req_headers", "resp_headers"):
        if h in kw:
            kw[h] = tuple((str(a), str(b)) for a, b in kw[h])
    try:
        return Call(**kw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad call record: {exc}") from None


def _unpack(value: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(value, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"call record is not msgpack: {exc}") from None


_REQ_H: Final = FIELDS.index("req_headers")
_RESP_H: Final = FIELDS.index("resp_headers")


def _from_row(row: Any, names: Sequence[str]) -> Call:
    if not isinstance(row, list):
        raise ValueError("call row is not an array")
    if names is FIELDS and len(row) == len(FIELDS):
        try:  # the common case, positionally
            row[_REQ_H] = tuple((str(a), str(b)) for a, b in row[_REQ_H])
            row[_RESP_H] = tuple((str(a), str(b)) for a, b in row[_RESP_H])
            return Call(*row)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad call record: {exc}") from None
    return _call({k: v for k, v in zip(names, row, strict=False) if k in _DEFAULTS})


def decode_row(row: bytes | memoryview) -> Call:
    """One version-2 row in ``FIELDS`` order (as the local store keeps them)."""
    return _from_row(_unpack(row), FIELDS)


def record_rows(value: bytes | memoryview) -> tuple[Sequence[str], list[Any]]:
    """The field names and the rows (arrays of values, not yet calls) of a version-2 value:
    readers that filter on a few fields build calls only for the rows they keep
    (:func:`call_from_row`). The names are ``FIELDS`` itself when the writer's are those."""
    d = _unpack(value)
    if not isinstance(d, dict) or d.get("v") != 2:
        raise ValueError("not a version-2 call record")
    names, rows = d.get("fields"), d.get("calls")
    if not isinstance(names, list) or not isinstance(rows, list):
        raise ValueError("version-2 call record without fields/calls arrays")
    return (FIELDS if names == list(FIELDS) else [str(n) for n in names]), rows


def call_from_row(row: Any, names: Sequence[str]) -> Call:
    """One row of :func:`record_rows` (``names`` as it returned them) as a call."""
    return _from_row(row, names)


def decode_calls(value: bytes | memoryview) -> list[Call]:
    """The calls of a ``rawcap.calls`` value of either version; raises ValueError naming
    what is wrong."""
    d = _unpack(value)
    if not isinstance(d, dict):
        raise ValueError("call record is not a map")
    v = d.get("v")
    if v == 1:
        return [_v1(d)]
    if v != 2:
        raise ValueError(f"call record version {v!r} is not 1 or 2")
    names, rows = d.get("fields"), d.get("calls")
    if not isinstance(names, list) or not isinstance(rows, list):
        raise ValueError("version-2 call record without fields/calls arrays")
    names = FIELDS if names == list(FIELDS) else [str(n) for n in names]
    return [_from_row(r, names) for r in rows]


def _v1(d: dict[str, Any]) -> Call:
    d.pop("v", None)
    return _call({k: d[k] for k in FIELDS if k in d})


def decode_call(value: bytes | memoryview) -> Call:
    """Decode a version-1 value (one call); raises ValueError naming what is wrong."""
    d = _unpack(value)
    if not isinstance(d, dict):
        raise ValueError("call record is not a map")
    v = d.get("v")
    if v != 1:
        raise ValueError(f"call record version {v!r} is not 1 (decode_calls reads both)")
    return _v1(d)
