"""Calls and flows as tables: the Parquet columns and the bucket layout, version 1.

Written by ``rawcap archive tables`` (one row per record of ``rawcap.calls`` /
``rawcap.flows``), read by ``rawcap trends`` / ``rawcap anomalies`` and by any engine that
reads Hive-partitioned Parquet (Spark, Trino, Athena: ``docs/history.md`` has the DDL).
Under the archive URL::

    kind=<calls|flows>/date=YYYY-MM-DD/hour=HH/<topic>-<partition:05d>-<first:020d>-<last:020d>.parquet

One object holds the records of one Kafka partition whose row time (``ts``) falls in that
UTC hour, from offset ``first`` to ``last`` (the records of that hour between them, all of
them), in offset order. An object is written by one PUT, which the store makes visible
whole or not at all, so an object that exists is complete: its name is the record of what
is archived (there is no separate index, unlike the packet archive).

Columns are declared once, as rows of (name, type, meaning) in :data:`CALL_COLUMNS` and
:data:`FLOW_COLUMNS`; the types are portable Parquet types (no unsigned integers; times are
``timestamp[us, UTC]`` because Spark does not read nanosecond timestamps). Workload names
are columns. A change that renames or retypes a column is a new :data:`TABLES_VERSION`
under a new ``kind=`` prefix (``kind=calls2``); adding a column at the end is not.

Derived columns (computed once at write time, documented in docs/history.md):

- ``failed`` (calls): HTTP status >= 500, or gRPC status other than 0 (OK) when present,
  or DNS rcode 2 (SERVFAIL) or 5 (REFUSED), or a protocol error text (Redis, PostgreSQL).
- ``endpoint`` (calls): ``METHOD /path`` with numeric, hex and UUID path segments replaced
  by ``{id}`` and the query dropped (HTTP); the gRPC path; ``DNS <qtype>``; the Redis or
  SQL command word. A bounded set per service, so that it can be grouped on.
- ``*_pod`` / ``*_service``: a call names each end as a pod (``web-1``) or a service
  (``service/web``); the service column is filled from that form; flows carry whole
  workloads (pod, service, owner) and fill every column.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from .calls import Call
from .flows import FlowRecord

__all__ = (
    "CALL_COLUMNS",
    "FLOW_COLUMNS",
    "KINDS",
    "SCHEMA_METADATA_KEY",
    "TABLES_VERSION",
    "TableKey",
    "call_failed",
    "call_rows",
    "columns",
    "endpoint_of",
    "flow_rows",
    "flow_ts_ns",
    "frame",
    "hour_prefix",
    "names",
    "parse_table_key",
    "polars_schema",
    "table_key",
)

TABLES_VERSION: Final = 1
#: The Parquet key-value metadata entry naming the version an object was written with
#: (``tables/<TABLES_VERSION>``, or ``rollups/<ROLLUP_VERSION>`` for a roll-up).
SCHEMA_METADATA_KEY: Final = "rawcap.schema"
KINDS: Final = ("calls", "flows")
HOUR_NS: Final = 3_600_000_000_000

#: (column, type, meaning). Types: timestamp (us, UTC), string, bool, int16, int32, int64.
CALL_COLUMNS: Final = (
    ("ts", "timestamp", "request time (response time when the request was not seen)"),
    ("node", "string", "node that captured the call"),
    ("proto", "string", "http1, http2, grpc, dns, redis, postgres"),
    ("transport", "string", "tcp or udp"),
    ("src_ip", "string", "client address"),
    ("src_port", "int32", "client port"),
    ("dst_ip", "string", "server address"),
    ("dst_port", "int32", "server port"),
    ("src_namespace", "string", "client namespace ('' unknown)"),
    ("src_pod", "string", "client pod name ('' when not a pod)"),
    ("src_service", "string", "client service name ('' when not known)"),
    ("dst_namespace", "string", "server namespace"),
    ("dst_pod", "string", "server pod name"),
    ("dst_service", "string", "server service name"),
    ("endpoint", "string", "normalised operation (see module docstring)"),
    ("method", "string", "HTTP method"),
    ("path", "string", "HTTP path / gRPC method, as seen"),
    ("host", "string", "HTTP Host / :authority"),
    ("status", "int32", "HTTP status (0: none)"),
    ("grpc_status", "int16", "gRPC status (-1: none)"),
    ("qname", "string", "DNS query name"),
    ("qtype", "int32", "DNS query type"),
    ("rcode", "int16", "DNS response code (-1: none)"),
    ("command", "string", "Redis command / first SQL word"),
    ("error", "string", "protocol error text"),
    ("failed", "bool", "the call failed (rule in the module docstring)"),
    ("complete", "bool", "request and response both seen"),
    ("latency_ns", "int64", "response time - request time (null: not both seen)"),
    ("req_bytes", "int64", "request size (head + body)"),
    ("resp_bytes", "int64", "response size (head + body)"),
    ("kafka_partition", "int32", "partition of rawcap.calls the record came from"),
    ("kafka_offset", "int64", "its offset (one record is written once; its calls share it)"),
)

FLOW_COLUMNS: Final = (
    ("ts", "timestamp", "start of the interval the record covers (first packet if later)"),
    ("node", "string", "node that captured the flow"),
    ("proto", "string", "tcp or udp"),
    ("src_ip", "string", "side that opened the flow"),
    ("src_port", "int32", ""),
    ("dst_ip", "string", ""),
    ("dst_port", "int32", ""),
    ("first", "timestamp", "first packet of the flow in this record"),
    ("last", "timestamp", "last packet of the flow in this record"),
    ("packets_fwd", "int64", "src -> dst"),
    ("bytes_fwd", "int64", "src -> dst"),
    ("packets_rev", "int64", "dst -> src"),
    ("bytes_rev", "int64", "dst -> src"),
    ("flags_fwd", "int16", "OR of TCP flags src -> dst"),
    ("flags_rev", "int16", "OR of TCP flags dst -> src"),
    ("src_kind", "string", "pod, service or node ('' unknown)"),
    ("src_namespace", "string", ""),
    ("src_pod", "string", ""),
    ("src_service", "string", ""),
    ("src_owner", "string", "owner kind/name, e.g. Deployment/web"),
    ("dst_kind", "string", ""),
    ("dst_namespace", "string", ""),
    ("dst_pod", "string", ""),
    ("dst_service", "string", ""),
    ("dst_owner", "string", ""),
    ("src_comm", "string", "process name of the src end ('' unknown)"),
    ("src_pid", "int32", "(0 unknown)"),
    ("dst_comm", "string", ""),
    ("dst_pid", "int32", ""),
    ("kafka_partition", "int32", "partition of rawcap.flows the record came from"),
    ("kafka_offset", "int64", "its offset"),
)


def columns(kind: str) -> tuple[tuple[str, str, str], ...]:
    if kind == "calls":
        return CALL_COLUMNS
    if kind == "flows":
        return FLOW_COLUMNS
    raise ValueError(f"unknown table kind {kind!r}: expected calls or flows")


# -- layout ---------------------------------------------------------------------------------
_KEY_RE = re.compile(
    r"(?:^|/)kind=(?P<kind>[a-z0-9_]+)/date=(?P<date>\d{4}-\d\d-\d\d)/hour=(?P<hour>\d\d)/"
    r"(?P<topic>.+)-(?P<p>\d{5})-(?P<first>\d{20})-(?P<last>\d{20})\.parquet$"
)


class TableKey(NamedTuple):
    kind: str
    hour: int  # hours since the epoch, UTC
    topic: str
    partition: int
    first: int
    last: int


def hour_prefix(kind: str, hour: int) -> str:
    """``kind=calls/date=YYYY-MM-DD/hour=HH/``: every object of one kind and UTC hour."""
    t = dt.datetime.fromtimestamp(hour * 3600, dt.UTC)
    return f"kind={kind}/date={t:%Y-%m-%d}/hour={t:%H}/"


def table_key(kind: str, hour: int, topic: str, partition: int, first: int, last: int) -> str:
    return f"{hour_prefix(kind, hour)}{topic}-{partition:05d}-{first:020d}-{last:020d}.parquet"


def parse_table_key(key: str) -> TableKey:
    """The parts of an object key (under any prefix); ValueError if it is not one."""
    m = _KEY_RE.search(key)
    if not m:
        raise ValueError(f"not a table object key: {key!r}")
    t = dt.datetime.strptime(f"{m['date']} {m['hour']}", "%Y-%m-%d %H").replace(tzinfo=dt.UTC)
    return TableKey(m["kind"], int(t.timestamp()) // 3600, m["topic"], int(m["p"]),
                    int(m["first"]), int(m["last"]))


# -- rows -----------------------------------------------------------------------------------
_ID_SEGMENT = re.compile(r"\d+|[0-9a-fA-F-]{16,}|(?=[^/]*\d)[A-Za-z0-9_.~-]{12,}")


def _template(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0]
    return "/".join("{id}" if _ID_SEGMENT.fullmatch(s) else s for s in path.split("/"))


def endpoint_of(call: Call) -> str:
    """The normalised operation of a call (rule in the module docstring)."""
    if call.proto == "dns":
        return f"DNS {call.qtype}"
    if call.proto in ("redis", "postgres"):
        return call.command.upper()
    if call.proto == "grpc":
        return call.path
    return f"{call.method} {_template(call.path)}".strip()


def call_failed(call: Call) -> bool:
    if call.status >= 500 or call.grpc_status > 0:
        return True
    if call.proto == "dns":
        return call.rcode in (2, 5)
    return call.proto in ("redis", "postgres") and bool(call.error)


def _split_name(workload: str) -> tuple[str, str]:
    """(pod, service) from a call's ``src_workload`` form: ``web-1`` or ``service/web``."""
    if workload.startswith("service/"):
        return "", workload[8:]
    if "/" in workload:  # node/NAME and other non-pod forms
        return "", ""
    return workload, ""


def call_rows(calls: Iterable[tuple[int, int, Call]]) -> dict[str, list[Any]]:
    """Columns (``CALL_COLUMNS`` order) of ``(partition, offset, call)`` records;
    timestamps in microseconds."""
    out: dict[str, list[Any]] = {name: [] for name, _t, _d in CALL_COLUMNS}
    cols = [out[name] for name, _t, _d in CALL_COLUMNS]
    for part, off, c in calls:
        sp, ss = _split_name(c.src_workload)
        dp, ds = _split_name(c.dst_workload)
        latency = c.latency_ns if c.req_ts_ns and c.resp_ts_ns else None
        row = (
            c.ts_ns // 1000, c.node, c.proto, c.transport, c.src_ip, c.src_port, c.dst_ip,
            c.dst_port, c.src_namespace, sp, ss, c.dst_namespace, dp, ds, endpoint_of(c),
            c.method, c.path, c.host, c.status, c.grpc_status, c.qname, c.qtype, c.rcode,
            c.command, c.error, call_failed(c), c.complete, latency, c.req_bytes, c.resp_bytes,
            part, off,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return out


def _wl_cols(wl: Any) -> tuple[str, str, str, str, str]:
    if wl is None:
        return "", "", "", "", ""
    pod = wl.name if wl.kind == "pod" else ""
    service = wl.name if wl.kind == "service" else wl.service
    owner = f"{wl.owner_kind}/{wl.owner_name}" if wl.owner_kind else ""
    return wl.kind, wl.namespace, pod, service, owner


def flow_ts_ns(rec: FlowRecord) -> int:
    return max(rec.interval_ns, rec.first_ns)


def flow_rows(flows: Iterable[tuple[int, int, FlowRecord]]) -> dict[str, list[Any]]:
    """Columns (``FLOW_COLUMNS`` order) of ``(partition, offset, flow)`` records."""
    out: dict[str, list[Any]] = {name: [] for name, _t, _d in FLOW_COLUMNS}
    cols = [out[name] for name, _t, _d in FLOW_COLUMNS]
    for part, off, r in flows:
        sp, dp = r.src_process, r.dst_process
        row = (
            flow_ts_ns(r) // 1000, r.node, r.proto, r.src, r.sport, r.dst, r.dport,
            r.first_ns // 1000, r.last_ns // 1000, r.packets_fwd, r.bytes_fwd, r.packets_rev,
            r.bytes_rev, r.flags_fwd, r.flags_rev, *_wl_cols(r.src_workload),
            *_wl_cols(r.dst_workload), sp.comm if sp else "", sp.pid if sp else 0,
            dp.comm if dp else "", dp.pid if dp else 0, part, off,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return out


def names(kind: str) -> list[str]:
    return [name for name, _t, _d in columns(kind)]


_POLARS_TYPES: Final = {"string": "String", "bool": "Boolean", "int16": "Int16", "int32": "Int32",
                        "int64": "Int64"}


def polars_schema(kind: str) -> Any:
    """The columns of ``kind`` as a ``polars.Schema`` (polars is imported here, on first use)."""
    import polars as pl

    def dtype(t: str) -> Any:
        return pl.Datetime("us", "UTC") if t == "timestamp" else getattr(pl, _POLARS_TYPES[t])

    return pl.Schema([(name, dtype(t)) for name, t, _d in columns(kind)])


def frame(kind: str, cols: dict[str, list[Any]]) -> Any:
    """A ``polars.DataFrame`` of ``kind`` from :func:`call_rows` / :func:`flow_rows` output."""
    import polars as pl

    return pl.DataFrame(cols, schema=polars_schema(kind))
