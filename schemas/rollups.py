"""Hourly roll-ups of the calls and flows tables: columns, latency sketch and layout, version 1.

The table writer (``rawcap archive tables``) writes, next to each raw object
(:mod:`schemas.tables`), its roll-ups: the same records aggregated per UTC hour and key, in
objects of the same name under their own kinds::

    kind=calls_1h/date=YYYY-MM-DD/hour=HH/<topic>-<partition:05d>-<first:020d>-<last:020d>.parquet
    kind=flows_1h/...   (from a flows object)
    kind=peers_1h/...   (from a calls object and from a flows object: their topic names differ)

A roll-up object aggregates exactly the records of the raw object with the same name, so
merging the roll-ups of an hour (sums, sketch merges) gives the hour's numbers whatever the
objects' boundaries were. Their size follows the shape of the cluster (workloads, endpoints,
nodes), not the number of calls.

- ``calls_1h``: per hour and serving side (node, proto, transport, dst namespace, service,
  pod, address, port, endpoint): calls, failed calls, calls with a latency, request and
  response bytes, and a latency sketch.
- ``flows_1h``: per hour and serving side (node, proto, dst namespace, service, pod, owner,
  address, port): records, distinct 5-tuples among those records, packets and bytes each way.
- ``peers_1h``: per hour, client workload, peer workload and port: records, bytes, first and
  last time, the smallest peer address, the first three nodes (sorted) - the edges that the
  new-peer rule compares. Workload names: :func:`workload_name`.

**Latency sketch** (fixed log-scale bins, DDSketch's mapping): a latency of ``x`` ns (at
least 1; 0 counts as 1) falls in bin ``i = ceil(ln(x) / ln(gamma))`` with
``gamma = (1 + ALPHA) / (1 - ALPHA)``; bin ``i`` holds ``(gamma**(i-1), gamma**i]`` and is read
as ``2 * gamma**i / (gamma + 1)``, within ``ALPHA`` (relative) of every value in it. Sketches
merge by adding the counts of equal bins. A quantile is read the way numpy's default is
computed (linear interpolation between the two closest ranks), from the bins that hold those
ranks: its relative error against the exact quantile of the same calls is at most ``ALPHA``.
The sketch is stored sparse: ``lat_bins`` (ascending) and ``lat_counts``, two lists.

A change of the bins (``ALPHA``), of a key or of a column's meaning is a new
:data:`ROLLUP_VERSION` under new kinds (``calls_1h_v2``); adding a column at the end is not.
"""

from __future__ import annotations

import math
from typing import Any, Final

from .tables import hour_prefix, parse_table_key

__all__ = (
    "ALPHA",
    "CALLS_1H_COLUMNS",
    "CALL_KEYS",
    "FLOWS_1H_COLUMNS",
    "FLOW_KEYS",
    "GAMMA",
    "PEERS_1H_COLUMNS",
    "ROLLUP_KINDS",
    "ROLLUP_OF",
    "ROLLUP_VERSION",
    "WORKLOAD_SUFFIX",
    "bin_of",
    "bin_value",
    "rollup_columns",
    "rollup_key",
    "rollup_prefix",
    "rollup_schema",
    "rollups",
    "sketch_quantiles",
    "workload_name",
)

ROLLUP_VERSION: Final = 1
#: relative error of a latency read from a sketch (bins of width ln(GAMMA) ~ 0.04)
ALPHA: Final = 0.02
GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
_LN_GAMMA: Final = math.log(GAMMA)
#: raw table kind -> the roll-up kinds written from each of its objects
ROLLUP_OF: Final = {"calls": ("calls_1h", "peers_1h"), "flows": ("flows_1h", "peers_1h")}
ROLLUP_KINDS: Final = ("calls_1h", "flows_1h", "peers_1h")
#: generated parts of a pod name (ReplicaSet hash, pod hash): ``web-5d8f7c9b4-x2x9q`` -> ``web``
WORKLOAD_SUFFIX: Final = r"(-[a-z0-9]{6,10})?-[a-z0-9]{5}$"

CALL_KEYS: Final = ("node", "proto", "transport", "dst_namespace", "dst_service", "dst_pod", "dst_ip",
                    "dst_port", "endpoint")
FLOW_KEYS: Final = ("node", "proto", "dst_namespace", "dst_service", "dst_pod", "dst_owner", "dst_ip",
                    "dst_port")

#: (column, type, meaning); key columns mean what they mean in the raw table
CALLS_1H_COLUMNS: Final = (
    ("hour", "timestamp", "start of the UTC hour"),
    ("node", "string", ""), ("proto", "string", ""), ("transport", "string", ""),
    ("dst_namespace", "string", ""), ("dst_service", "string", ""), ("dst_pod", "string", ""),
    ("dst_ip", "string", ""), ("dst_port", "int32", ""), ("endpoint", "string", ""),
    ("calls", "int64", "calls"),
    ("errors", "int64", "calls with failed set"),
    ("timed", "int64", "calls with a latency (request and response both seen)"),
    ("req_bytes", "int64", "sum of req_bytes"),
    ("resp_bytes", "int64", "sum of resp_bytes"),
    ("lat_bins", "list[int16]", "latency sketch: bins holding at least one call, ascending"),
    ("lat_counts", "list[int64]", "latency sketch: calls in each of those bins"),
)
FLOWS_1H_COLUMNS: Final = (
    ("hour", "timestamp", "start of the UTC hour"),
    ("node", "string", ""), ("proto", "string", ""), ("dst_namespace", "string", ""),
    ("dst_service", "string", ""), ("dst_pod", "string", ""), ("dst_owner", "string", ""),
    ("dst_ip", "string", ""), ("dst_port", "int32", ""),
    ("records", "int64", "flow records"),
    ("flows", "int64", "distinct (proto, src, sport, dst, dport) among those records"),
    ("packets_fwd", "int64", ""), ("bytes_fwd", "int64", ""),
    ("packets_rev", "int64", ""), ("bytes_rev", "int64", ""),
)
PEERS_1H_COLUMNS: Final = (
    ("hour", "timestamp", "start of the UTC hour"),
    ("source", "string", "calls or flows: the table the records came from"),
    ("client", "string", "client workload, namespace/name (workload_name)"),
    ("peer", "string", "server workload, namespace/name"),
    ("port", "int32", "server port"),
    ("records", "int64", "records (calls or flow records)"),
    ("bytes", "int64", "request + response bytes (calls), bytes both ways (flows)"),
    ("first", "timestamp", "earliest record time"),
    ("last", "timestamp", "latest record time"),
    ("ip", "string", "smallest server address"),
    ("nodes", "list[string]", "the first three capturing nodes, sorted"),
)


def rollup_columns(rkind: str) -> tuple[tuple[str, str, str], ...]:
    cols = {"calls_1h": CALLS_1H_COLUMNS, "flows_1h": FLOWS_1H_COLUMNS, "peers_1h": PEERS_1H_COLUMNS}
    if rkind not in cols:
        raise ValueError(f"unknown roll-up kind {rkind!r}: expected one of {', '.join(ROLLUP_KINDS)}")
    return cols[rkind]


def rollup_schema(rkind: str) -> Any:
    """The columns of a roll-up kind as a ``polars.Schema``."""
    import polars as pl

    simple: dict[str, Any] = {"string": pl.String, "int16": pl.Int16, "int32": pl.Int32, "int64": pl.Int64,
              "timestamp": pl.Datetime("us", "UTC"), "list[int16]": pl.List(pl.Int16),
              "list[int64]": pl.List(pl.Int64), "list[string]": pl.List(pl.String)}
    return pl.Schema([(name, simple[t]) for name, t, _d in rollup_columns(rkind)])


def rollup_key(raw_key: str, rkind: str) -> str:
    """The key of the ``rkind`` roll-up of the raw object ``raw_key`` (same prefix and name)."""
    k = parse_table_key(raw_key)
    if rkind not in ROLLUP_OF.get(k.kind, ()):
        raise ValueError(f"no {rkind} roll-up for a {k.kind} object")
    base = raw_key[: raw_key.index(f"kind={k.kind}/")]
    return base + hour_prefix(rkind, k.hour) + raw_key.rsplit("/", 1)[1]


def rollup_prefix(rkind: str, hour: int) -> str:
    return hour_prefix(rkind, hour)


# -- the sketch -----------------------------------------------------------------------------
def bin_of(latency_ns: Any) -> Any:
    """Polars expression: the sketch bin (Int16) of a latency in ns (null stays null)."""
    import polars as pl

    return (latency_ns.clip(lower_bound=1).cast(pl.Float64).log() / _LN_GAMMA).ceil().cast(pl.Int16)


def bin_value(b: Any) -> Any:
    """Polars expression: the value (ns, Float64) a bin is read as."""
    import polars as pl

    return (b.cast(pl.Float64) * _LN_GAMMA).exp() * (2 / (GAMMA + 1))


def sketch_quantiles(long: Any, keys: list[str], qs: dict[str, float], scale: float = 1e-6) -> Any:
    """Quantiles per ``keys`` from merged sketch rows ``(*keys, bin, n)`` (``n`` > 0; a bin
    may repeat): columns ``keys`` + one per ``qs`` name, in ns x ``scale`` (ms). Linear
    interpolation between the closest ranks, on the bins' values: the rank ``r`` falls in
    the first bin (ascending) whose running count exceeds ``r``."""
    import polars as pl

    tot = pl.col("n").sum()
    cum = pl.col("n").sort_by("bin").cum_sum()
    bins = pl.col("bin").sort()

    def at(rank: Any) -> Any:
        return bin_value(bins.gather(cum.search_sorted(rank.cast(pl.Int64), side="right")).first())

    aggs = []
    for name, q in qs.items():
        pos = (tot - 1).cast(pl.Float64) * q
        lo = pos.floor()
        b_lo, b_hi = at(lo), at(pl.min_horizontal(lo + 1, tot - 1))
        aggs.append(((b_lo + (b_hi - b_lo) * (pos - lo)) * scale).alias(name))
    return long.group_by(keys).agg(aggs)


# -- the roll-ups ---------------------------------------------------------------------------
def workload_name(p: str, kind: str) -> Any:
    """Polars expression over a raw row (``p``: ``src_`` or ``dst_``): the side's workload as
    ``namespace/name``: its service, else its owner's name (flows: ``Deployment/web`` ->
    ``web``), else its pod name less the generated suffixes, else its address."""
    import polars as pl

    def col(name: str) -> Any:
        return pl.when(pl.col(name) == "").then(None).otherwise(pl.col(name))

    owner = col(p + "owner").str.replace(r"^[^/]*/", "") if kind == "flows" else pl.lit(None, pl.String)
    name = pl.coalesce(col(p + "service"), owner, col(p + "pod").str.replace(WORKLOAD_SUFFIX, ""),
                       pl.col(p + "ip"))
    ns = pl.col(p + "namespace")
    return pl.when(ns == "").then(name).otherwise(ns + pl.lit("/") + name)


def _side_keys(kind: str) -> list[str]:
    cols = ["namespace", "service", "pod", "ip"] + (["owner"] if kind == "flows" else [])
    return [p + c for p in ("src_", "dst_") for c in cols]


def peers(lf: Any, kind: str, period: Any) -> Any:
    """Edges (client, peer, port) per ``period`` (an expression over the raw rows, named
    ``period``): records, bytes, first, last, ip, nodes. The raw rows are grouped by their
    side columns first, so the name rule runs once per distinct side, not per record."""
    import polars as pl

    size = (pl.col("req_bytes") + pl.col("resp_bytes")) if kind == "calls" else \
        (pl.col("bytes_fwd") + pl.col("bytes_rev"))
    sides = _side_keys(kind)
    first = lf.group_by(period, *sides, "dst_port", "node").agg(
        pl.len().alias("records"), size.sum().alias("bytes"), pl.col("ts").min().alias("first"),
        pl.col("ts").max().alias("last"))
    return first.with_columns(
        workload_name("src_", kind).alias("client"), workload_name("dst_", kind).alias("peer"),
        pl.col("dst_port").alias("port"),
    ).group_by("period", "client", "peer", "port").agg(
        pl.col("records").sum(), pl.col("bytes").sum(), pl.col("first").min(), pl.col("last").max(),
        pl.col("dst_ip").min().alias("ip"), pl.col("node").unique().sort().head(3).alias("nodes"))


def rollups(kind: str, df: Any) -> dict[str, Any]:
    """The roll-ups (``ROLLUP_OF[kind]`` -> ``polars.DataFrame``) of a frame of raw rows of
    ``kind`` (:func:`schemas.tables.frame`, or rows read back from an object), sorted by
    their keys."""
    import polars as pl

    lf = df.lazy()
    hour = pl.col("ts").dt.truncate("1h")
    if kind == "calls":
        keys = ["hour", *CALL_KEYS]
        base = lf.with_columns(hour.alias("hour"), bin_of(pl.col("latency_ns")).alias("bin"))
        counts = base.group_by(keys).agg(
            pl.len().alias("calls"), pl.col("failed").sum().cast(pl.Int64).alias("errors"),
            pl.col("latency_ns").count().alias("timed"), pl.col("req_bytes").sum(),
            pl.col("resp_bytes").sum())
        timed = base.filter(pl.col("bin").is_not_null())
        sketch = timed.group_by(*keys, "bin").agg(pl.len().alias("n")).sort([*keys, "bin"]).group_by(
            keys, maintain_order=True).agg(
            pl.col("bin").alias("lat_bins"), pl.col("n").alias("lat_counts"))
        main = counts.join(sketch, on=keys, how="left", nulls_equal=True)
        rkind = "calls_1h"
    elif kind == "flows":
        keys = ["hour", *FLOW_KEYS]
        main = lf.with_columns(hour.alias("hour")).group_by(keys).agg(
            pl.len().alias("records"),
            pl.struct("proto", "src_ip", "src_port", "dst_ip", "dst_port").n_unique().alias("flows"),
            pl.col("packets_fwd").sum(), pl.col("bytes_fwd").sum(), pl.col("packets_rev").sum(),
            pl.col("bytes_rev").sum())
        rkind = "flows_1h"
    else:
        raise ValueError(f"unknown table kind {kind!r}: expected calls or flows")
    edges = peers(lf, kind, hour.alias("period")).rename({"period": "hour"}).with_columns(
        pl.lit(kind).alias("source"))

    def done(q: Any, name: str, order: list[str]) -> Any:
        schema = rollup_schema(name)
        return q.select(pl.col(c).cast(t) for c, t in schema.items()).sort(order)

    out = pl.collect_all([done(main, rkind, keys),
                          done(edges, "peers_1h", ["hour", "client", "peer", "port"])])
    return dict(zip(ROLLUP_OF[kind], out, strict=True))

