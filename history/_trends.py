"""``rawcap trends``: metrics per time bucket and group, computed by Polars.

Each call or flow is attributed to its **serving side** (the ``dst_*`` columns: the
service, pod or namespace that answered), or with ``side="client"`` to the side that asked.
Metrics from calls: ``requests`` (count), ``errors`` (``failed`` calls), ``error-rate``
(errors / requests), ``p50`` / ``p99`` (latency in ms over calls whose request and response
were both seen; linear interpolation between closest ranks); from flows: ``bytes`` (both
directions) and ``flows`` (distinct 5-tuples in the bucket). Buckets start at multiples of
``every`` since the epoch (UTC).

A kind is answered from the hourly roll-ups (:mod:`schemas.rollups`) when
:meth:`TrendQuery.rollup_reason` finds nothing against it: ``every`` a multiple of one hour,
the serving side, filters only on roll-up keys (``--node``, ``--proto``), no ``flows``
metric (distinct 5-tuples do not add up over hours), and not ``exact``. Counts, errors and
bytes are then the same as from raw rows; ``p50`` / ``p99`` come from the merged latency
sketches, within ``schemas.rollups.ALPHA`` (2 %) of the exact value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.errors import ConfigError

__all__ = ("BY", "CALL_METRICS", "FLOW_METRICS", "METRICS", "ROLLUP_OF_KIND", "Filters", "TrendQuery",
           "group_expr", "trends")

CALL_METRICS: Final = ("requests", "errors", "error-rate", "p50", "p99")
FLOW_METRICS: Final = ("bytes", "flows")
METRICS: Final = CALL_METRICS + FLOW_METRICS
BY: Final = ("namespace", "service", "pod", "endpoint", "node")
UNKNOWN: Final = "(unknown)"
HOUR_NS: Final = 3_600_000_000_000
ROLLUP_OF_KIND: Final = {"calls": "calls_1h", "flows": "flows_1h"}


@dataclass(frozen=True)
class Filters:
    """``--node``, ``--host``, ``--port``, ``--proto``, ``--namespace``, ``--pod``: values of
    one flag are alternatives, flags AND together; host, port, namespace and pod match either
    end (as for the forensics commands)."""

    nodes: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    proto: str = ""
    namespaces: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for p in self.pods:
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"--pod {p!r} is not a valid regular expression: {exc}") from None

    def expr(self, kind: str) -> Any:
        import polars as pl

        e = pl.lit(True)
        if self.nodes:
            e &= pl.col("node").is_in(list(self.nodes))
        if self.hosts:
            e &= pl.col("src_ip").is_in(list(self.hosts)) | pl.col("dst_ip").is_in(list(self.hosts))
        if self.ports:
            e &= pl.col("src_port").is_in(list(self.ports)) | pl.col("dst_port").is_in(list(self.ports))
        if self.proto:
            e &= pl.col("transport" if kind == "calls" else "proto") == self.proto
        if self.namespaces:
            ns = list(self.namespaces)
            e &= pl.col("src_namespace").is_in(ns) | pl.col("dst_namespace").is_in(ns)
        if self.pods:
            rx = "|".join(f"(?:{p})" for p in self.pods)
            e &= pl.col("src_pod").str.contains(rx) | pl.col("dst_pod").str.contains(rx)
        return e


@dataclass(frozen=True)
class TrendQuery:
    lo_ns: int
    hi_ns: int
    every_ns: int
    by: str = "service"
    metrics: tuple[str, ...] = ("requests", "error-rate", "p99")
    side: str = "server"
    filters: Filters = field(default_factory=Filters)
    exact: bool = False  # raw rows even where roll-ups could answer

    def __post_init__(self) -> None:
        if self.by not in BY:
            raise ConfigError(f"--by {self.by!r} is invalid: expected one of {', '.join(BY)}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ConfigError(f"--metric {','.join(bad) or '(none)'} is invalid: expected any of "
                              f"{', '.join(METRICS)}")
        if self.side not in ("server", "client"):
            raise ConfigError(f"--side {self.side!r} is invalid: expected server or client")
        if self.every_ns <= 0:
            raise ConfigError("--every must be a positive duration, like 1h or 5m")
        if self.hi_ns <= self.lo_ns:
            raise ConfigError("--to must be after --from")
        if (self.hi_ns - self.lo_ns) // self.every_ns > 100_000:
            raise ConfigError("--every is too small for that range (more than 100000 buckets)")

    def rollup_reason(self, kind: str) -> str:
        """Why ``kind`` cannot be answered from the hourly roll-ups ('' when it can)."""
        f = self.filters
        if self.exact:
            return "--exact"
        if self.every_ns % HOUR_NS:
            return "--every is not a multiple of 1h"
        if self.side != "server":
            return "--side client: roll-ups keep the serving side"
        if f.hosts or f.ports or f.namespaces or f.pods:
            return "--host, --port, --namespace and --pod match either end: roll-ups keep the serving side"
        if kind == "flows" and "flows" in self.metrics:
            return "the flows metric counts distinct 5-tuples, which do not add up over hours"
        return ""

    def kinds(self) -> list[str]:
        out = []
        if any(m in CALL_METRICS for m in self.metrics):
            out.append("calls")
        if any(m in FLOW_METRICS for m in self.metrics):
            out.append("flows")
        return out


def group_expr(kind: str, by: str, side: str = "server") -> Any:
    """The group label of a row for ``--by`` (empty names become ``(unknown)``)."""
    import polars as pl

    p = "dst_" if side == "server" else "src_"

    def col(name: str) -> Any:
        return pl.when(pl.col(name) == "").then(None).otherwise(pl.col(name))

    who = pl.coalesce(col(p + "service"), col(p + "pod"))
    if by == "node":
        e = col("node")
    elif by == "namespace":
        e = col(p + "namespace")
    elif by == "pod":
        e = col(p + "pod")
    elif by == "service":
        e = who
    else:  # endpoint: who answered and what was asked
        name = pl.coalesce(who, pl.col("dst_ip") + pl.lit(":") + pl.col("dst_port").cast(pl.String))
        what = pl.col("endpoint") if kind == "calls" else pl.col("dst_port").cast(pl.String)
        e = pl.concat_str([name, what], separator=" ")
    return e.fill_null(UNKNOWN).alias("group")


def _bucket(every_ns: int) -> Any:
    import polars as pl

    every_us = max(1, every_ns // 1000)
    return ((pl.col("ts").dt.epoch("us") // every_us) * every_us * 1000).alias("bucket")


def _aggs(kind: str, metrics: Sequence[str]) -> list[Any]:
    import polars as pl

    lat_ms = pl.col("latency_ns").cast(pl.Float64) / 1e6
    if kind == "calls":
        return [
            pl.len().alias("requests"),
            pl.col("failed").sum().cast(pl.Int64).alias("errors"),
            lat_ms.quantile(0.5, "linear").alias("p50"),
            lat_ms.quantile(0.99, "linear").alias("p99"),
        ]
    return [
        (pl.col("bytes_fwd") + pl.col("bytes_rev")).sum().alias("bytes"),
        pl.struct("proto", "src_ip", "src_port", "dst_ip", "dst_port").n_unique().alias("flows"),
    ]


def _rollup_aggs(q: TrendQuery, kind: str, lf: Any) -> tuple[Any, Any]:
    """(per bucket, overall) of one kind from its hourly roll-ups (``lf``: ``calls_1h`` or
    ``flows_1h`` rows)."""
    import polars as pl

    from schemas.rollups import sketch_quantiles

    rows = lf.filter(q.filters.expr(kind)).with_columns(pl.col("hour").alias("ts")).select(
        group_expr(kind, q.by, q.side).cast(pl.Categorical), _bucket(q.every_ns),
        *(["calls", "errors", "lat_bins", "lat_counts"] if kind == "calls" else ["bytes_fwd", "bytes_rev"]),
    ).collect(engine="streaming")
    keys = ["group", "bucket"]
    if kind == "flows":
        per = rows.group_by(keys).agg((pl.col("bytes_fwd") + pl.col("bytes_rev")).sum().alias("bytes"))
        out = [per, per.group_by("group").agg(pl.col("bytes").sum())]
    else:
        per = rows.group_by(keys).agg(pl.col("calls").sum().alias("requests"), pl.col("errors").sum())
        out = [per, per.group_by("group").agg(pl.col("requests").sum(), pl.col("errors").sum())]
        if {"p50", "p99"} & set(q.metrics):
            # the sketches merged per bucket once; the overall merge starts from those
            sketch = rows.select(*keys, pl.col("lat_bins").alias("bin"), pl.col("lat_counts").alias("n"))
            long = sketch.explode("bin", "n").drop_nulls("bin").group_by(*keys, "bin").agg(pl.col("n").sum())
            qs = {"p50": 0.5, "p99": 0.99}
            overall = long.group_by("group", "bin").agg(pl.col("n").sum())
            out = [out[0].join(sketch_quantiles(long, keys, qs), on=keys, how="left"),
                   out[1].join(sketch_quantiles(overall, ["group"], qs), on="group", how="left")]
    per, total = (o.with_columns(pl.col("group").cast(pl.String)) for o in out)
    return per, total


def trends(q: TrendQuery, frames: dict[str, Any], rolled: Sequence[str] = ()) -> tuple[Any, Any]:
    """(per bucket, overall) DataFrames with columns ``group``, [``bucket`` ns,] and one
    per metric (``error-rate`` as ``error_rate``); ``frames`` maps kind -> LazyFrame of raw
    rows, or of its hourly roll-ups for the kinds in ``rolled``."""
    import polars as pl

    per: list[Any] = []
    total: list[Any] = []
    for kind in q.kinds():
        if kind in rolled:
            b, t = _rollup_aggs(q, kind, frames[kind])
            per.append(b)
            total.append(t)
            continue
        needed = ["failed", "latency_ns"] if kind == "calls" else [
            "bytes_fwd", "bytes_rev", "proto", "src_ip", "src_port", "dst_ip", "dst_port"]
        # one scan, narrowed to what the metrics need (group names as categories), then both
        # aggregations in memory: two lazy aggregations would read every object twice
        rows = frames[kind].filter(q.filters.expr(kind)).select(
            group_expr(kind, q.by, q.side).cast(pl.Categorical), _bucket(q.every_ns), *needed,
        ).collect(engine="streaming")
        aggs = _aggs(kind, q.metrics)
        b = rows.group_by("group", "bucket").agg(aggs).with_columns(pl.col("group").cast(pl.String))
        t = rows.group_by("group").agg(aggs).with_columns(pl.col("group").cast(pl.String))
        del rows
        per.append(b)
        total.append(t)

    def join(parts: list[Any], keys: list[str]) -> Any:
        out = parts[0]
        for other in parts[1:]:
            out = out.join(other, on=keys, how="full", coalesce=True)
        if "requests" in out.columns:
            out = out.with_columns(
                (pl.col("errors") / pl.col("requests")).alias("error_rate"))
        return out.sort(keys)

    return join(per, ["group", "bucket"]), join(total, ["group"])
