"""``rawcap anomalies``: what changed in a window against a baseline, by stated rules.

The window is ``[from, to)``, the baseline ``[baseline, from)``. Only whole hours of the
window are judged (a partial last hour would look like a drop). Rules (docs/history.md):

- **new-peer**: a client workload seen in the baseline talks to a peer (service, else pod,
  else address) or a port of that peer it never used in the baseline. Client workload: its
  service, else its owner (flows), else its pod name less the generated suffixes, else its
  address.
- **error-rate** / **latency** per endpoint (server + operation) and hour: the value is
  compared with the same hour of day on each baseline day (hours with at least
  ``MIN_CALLS`` calls; at least ``MIN_DAYS`` such days). Robust z-score
  ``z = (x - median) / max(1.4826 * MAD, floor)``; error-rate floor 1 percentage point,
  p99 floor max(10 % of the median, 1 ms). Error rate flagged when ``z >= Z``, the hour has
  at least ``MIN_CALLS`` calls and ``MIN_ERRORS`` failures; p99 when ``z >= Z``, it is at
  least ``LATENCY_RATIO`` times the median, the hour (like each baseline hour used) has
  at least ``MIN_LATENCY_CALLS`` calls, and it happens in ``LATENCY_HOURS`` consecutive
  hours or more (one hour's p99 of a few dozen calls swings that far by chance).
- **volume** (spike or drop) per server workload and hour: the same, on ``ln(1 + calls)``
  with every baseline hour of that workload counted (0 when it had no calls), floor 0.25;
  flagged when ``|z| >= Z`` and the larger of the value and the baseline median is at least
  ``MIN_CALLS``.

Consecutive flagged hours of the same rule and subject are one finding (its worst hour's
numbers). Each finding carries the ``rawcap pcap export --source archive`` command for its
packets.

The same rules run on raw rows (:func:`find_anomalies`) or on the hourly roll-ups
(:func:`find_anomalies_rollups`: ``calls_1h`` and ``peers_1h``), where counts are the same
and a p99 comes from the merged latency sketches (within ``schemas.rollups.ALPHA``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = (
    "LATENCY_HOURS",
    "LATENCY_RATIO",
    "MAD_SCALE",
    "MIN_CALLS",
    "MIN_DAYS",
    "MIN_ERRORS",
    "MIN_LATENCY_CALLS",
    "Finding",
    "Z",
    "find_anomalies",
    "find_anomalies_rollups",
    "robust_z",
)

HOUR_NS: Final = 3_600_000_000_000
DAY_HOURS: Final = 24
Z: Final = 4.0
MAD_SCALE: Final = 1.4826
MIN_CALLS: Final = 20
MIN_LATENCY_CALLS: Final = 50  # a p99 of fewer calls is little more than their maximum
MIN_ERRORS: Final = 10
LATENCY_RATIO: Final = 1.5
LATENCY_HOURS: Final = 2  # a shift, not one noisy hour
MIN_DAYS: Final = 3
_POD_SUFFIX = re.compile(r"(-[a-z0-9]{6,10})?-[a-z0-9]{5}$")


def robust_z(x: float, baseline: list[float], floor: float) -> tuple[float, float, float]:
    """(z, median, MAD) of ``x`` against ``baseline`` (rule in the module docstring)."""
    med = statistics.median(baseline)
    mad = statistics.median(abs(b - med) for b in baseline)
    return (x - med) / max(MAD_SCALE * mad, floor), med, mad


@dataclass
class Finding:
    rule: str  # new-peer | error-rate | latency | volume-spike | volume-drop
    subject: str
    start_ns: int
    end_ns: int
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()
    port: int = 0
    nodes: tuple[str, ...] = ()
    score: float = 0.0

    def export_command(self, out: str) -> str:
        args = ["rawcap pcap export --source archive", f"--from {_iso(self.start_ns)}",
                f"--to {_iso(self.end_ns)}"]
        args += [f"--node {n}" for n in self.nodes[:3]]
        args += [f"--host {h}" for h in self.hosts[:3]]
        if self.port:
            args.append(f"--port {self.port}")
        return " ".join(args) + f" -o {out}"

    def as_dict(self, index: int) -> dict[str, Any]:
        return {"rule": self.rule, "subject": self.subject, "from": _iso(self.start_ns),
                "to": _iso(self.end_ns), "summary": self.summary, "score": round(self.score, 2),
                "evidence": self.evidence,
                "export": self.export_command(f"anomaly-{index}.pcapng")}


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _side_keys(p: str, kind: str) -> list[Any]:
    """Cheap per-row key columns of one side (``p``: "src_"/"dst_"): namespace, service,
    owner (flows), pod, and the address only when the side has no name."""
    import polars as pl

    unnamed = (pl.col(p + "service") == "") & (pl.col(p + "pod") == "")
    owner = pl.col(p + "owner") if kind == "flows" else pl.lit("")
    return [pl.col(p + "namespace").alias(p + "ns"), pl.col(p + "service").alias(p + "svc"),
            owner.alias(p + "own"), pl.col(p + "pod").alias(p + "pod"),
            pl.when(unnamed).then(pl.col(p + "ip")).otherwise(pl.lit("")).alias(p + "addr")]


def _name(p: str) -> Any:
    """A side's workload name from its key columns: service, else owner name (Deployment/web
    -> web, the name a call's pod gives), else pod less its generated suffixes, else address;
    prefixed by the namespace. Applied to aggregated rows: a regex per record costs too much."""
    import polars as pl

    def col(name: str) -> Any:
        return pl.when(pl.col(name) == "").then(None).otherwise(pl.col(name))

    name = pl.coalesce(col(p + "svc"), col(p + "own").str.replace(r"^[^/]*/", ""),
                       col(p + "pod").str.replace(_POD_SUFFIX.pattern, ""), pl.col(p + "addr"))
    ns = pl.col(p + "ns")
    return pl.when(ns == "").then(name).otherwise(ns + pl.lit("/") + name)


def _day_slices(lf: Any, lo_ns: int, hi_ns: int) -> list[Any]:
    """``lf`` cut into UTC days of ``[lo, hi)``: aggregated one day at a time, a week of
    calls needs a seventh of the memory (row-group statistics skip the other days' rows)."""
    import polars as pl

    day = 24 * HOUR_NS
    cuts = [lo_ns, *range((lo_ns // day + 1) * day, hi_ns, day), hi_ns]
    us = pl.Datetime("us", "UTC")
    ts = pl.col("ts")
    return [lf.filter((ts >= pl.lit(a // 1000).cast(us)) & (ts < pl.lit(b // 1000).cast(us)))
            for a, b in itertools.pairwise(cuts) if b > a]


def _edges(frames: dict[str, Any], lo_ns: int) -> Any:
    """Per (client, peer, port, period): rows, bytes, first/last time, an address, nodes."""
    import polars as pl

    lo = pl.lit(lo_ns // 1000).cast(pl.Datetime("us", "UTC"))
    keys = [f"{p}{k}" for p in ("src_", "dst_") for k in ("ns", "svc", "own", "pod", "addr")]
    out = []
    for kind, lf in frames.items():
        size = (pl.col("req_bytes") + pl.col("resp_bytes")) if kind == "calls" else \
            (pl.col("bytes_fwd") + pl.col("bytes_rev"))
        out.append(lf.select(
            *_side_keys("src_", kind), *_side_keys("dst_", kind), pl.col("dst_port").alias("port"),
            (pl.col("ts") >= lo).alias("current"), pl.col("ts"), pl.col("dst_ip"), pl.col("node"),
            size.alias("size"), pl.lit(kind).alias("kind"),
        ).group_by(*keys, "port", "current").agg(
            pl.len().alias("rows"), pl.col("size").sum().alias("bytes"), pl.col("ts").min().alias("first"),
            pl.col("ts").max().alias("last"), pl.col("dst_ip").first().alias("ip"),
            pl.col("node").first(), pl.col("kind").first(),
        ))
    agg = pl.concat([q.collect(engine="streaming") for q in out])
    return agg.with_columns(_name("src_").alias("client"), _name("dst_").alias("peer")).group_by(
        "client", "peer", "port", "current").agg(
        pl.col("rows").sum(), pl.col("bytes").sum(), pl.col("first").min(), pl.col("last").max(),
        pl.col("ip").first(), pl.col("node").unique().sort().head(3).alias("nodes"),
        pl.col("kind").unique().sort().alias("kinds"))


def _edges_rollups(peers_1h: Any) -> Any:
    """:func:`_edges` from ``peers_1h`` roll-ups (``span`` 1: the window)."""
    import polars as pl

    return peers_1h.with_columns((pl.col("span") == 1).alias("current")).group_by(
        "client", "peer", "port", "current").agg(
        pl.col("records").sum().alias("rows"), pl.col("bytes").sum(), pl.col("first").min(),
        pl.col("last").max(), pl.col("ip").min(),
        pl.col("nodes").explode().unique().sort().head(3).alias("nodes"),
        pl.col("source").unique().sort().alias("kinds"),
    ).collect(engine="streaming")


def _new_peers(edges: Any) -> list[Finding]:
    base = edges.filter(~edges["current"])
    known_clients = set(base["client"].to_list())
    known_peers: dict[str, set[str]] = defaultdict(set)
    known_edges = set()
    for c, p, port in base.select("client", "peer", "port").iter_rows():
        known_peers[c].add(p)
        known_edges.add((c, p, port))
    found = []
    for r in edges.filter(edges["current"]).iter_rows(named=True):
        c, p, port = r["client"], r["peer"], r["port"]
        if c not in known_clients or (c, p, port) in known_edges:
            continue
        what = "a new port of a known peer" if p in known_peers[c] else "a new peer"
        first, last = _ns(r["first"]), _ns(r["last"])
        used = sorted(known_peers[c])
        found.append(Finding(
            "new-peer", f"{c} -> {p}:{port}", first - 60 * 10**9, last + 60 * 10**9,
            f"{c} talked to {what}: {p} port {port} ({r['rows']} {'/'.join(r['kinds'])} records, "
            f"{r['bytes']} bytes, first {_iso(first)}); the baseline has {len(used)} peer(s) of {c}",
            {"client": c, "peer": p, "port": port, "records": r["rows"], "bytes": r["bytes"],
             "first_seen": _iso(first), "last_seen": _iso(last), "baseline_peers": used[:20]},
            hosts=(r["ip"],), port=port, nodes=tuple(r["nodes"]), score=float(r["rows"])))
    return found


def _ns(t: Any) -> int:
    return int(t.timestamp() * 1e9) if hasattr(t, "timestamp") else int(t)


def _hourly_first(calls: Any, who: Any) -> Any:
    import polars as pl

    return calls.select(
        pl.col("dst_namespace").alias("dst_ns"), who.alias("who"), (pl.col("dst_service") != "").alias("svc"),
        pl.when(who == "").then(pl.col("dst_ip")).otherwise(pl.lit("")).alias("dst_addr"), "endpoint",
        (pl.col("ts").dt.epoch("us") // (HOUR_NS // 1000)).alias("hour"), "failed", "latency_ns", "dst_ip",
        "dst_port", "node",
    ).group_by("dst_ns", "who", "svc", "dst_addr", "endpoint", "hour").agg(
        pl.len().alias("n"), pl.col("failed").sum().cast(pl.Int64).alias("errors"),
        (pl.col("latency_ns").cast(pl.Float64) / 1e6).quantile(0.99, "linear").alias("p99"),
        pl.col("dst_ip").first().alias("ip"), pl.col("dst_port").first().alias("port"),
        pl.col("node").first(),
    ).collect(engine="streaming")


def _who() -> Any:
    import polars as pl

    return pl.when(pl.col("dst_service") != "").then(pl.col("dst_service")).otherwise(pl.col("dst_pod"))


def _hourly_first_rollups(calls_1h: Any) -> Any:
    """:func:`_hourly_first` from ``calls_1h`` roll-ups: sums, and the p99 of the merged
    sketches."""
    import polars as pl

    from schemas.rollups import sketch_quantiles

    who = _who()
    keys = ["dst_ns", "who", "svc", "dst_addr", "endpoint", "hour"]
    rows = calls_1h.select(
        pl.col("dst_namespace").alias("dst_ns"), who.alias("who"), (pl.col("dst_service") != "").alias("svc"),
        pl.when(who == "").then(pl.col("dst_ip")).otherwise(pl.lit("")).alias("dst_addr"), "endpoint",
        (pl.col("hour").dt.epoch("us") // (HOUR_NS // 1000)).alias("hour"), "calls", "errors", "lat_bins",
        "lat_counts", "dst_ip", "dst_port", "node",
    ).collect(engine="streaming")
    # one integer per key: the sketches' bins are merged on (key, bin), not on six strings
    rows = rows.with_columns(pl.struct(keys).rank("dense").alias("_k"))
    counts = rows.group_by(keys).agg(
        pl.col("_k").first(), pl.col("calls").sum().alias("n"), pl.col("errors").sum(),
        pl.col("dst_ip").first().alias("ip"), pl.col("dst_port").first().alias("port"),
        pl.col("node").first())
    long = rows.select("_k", pl.col("lat_bins").alias("bin"), pl.col("lat_counts").alias("n")).explode(
        "bin", "n").drop_nulls("bin").group_by("_k", "bin").agg(pl.col("n").sum())
    return counts.join(sketch_quantiles(long, ["_k"], {"p99": 0.99}), on="_k", how="left").drop("_k")


def _hourly(calls: Any, span: tuple[int, int] | None) -> Any:
    """Per (endpoint, workload, hour): calls, errors, p99, an address and port, nodes, from
    raw rows (``span``: their range) or from ``calls_1h`` roll-ups (``span`` None).

    Aggregated by what each call names (service, or pod) first; a workload reached by pod
    name on several pods gets the largest of its pods' p99 (a call names a service when it
    went through one, the usual case, and then the p99 is exact)."""
    import polars as pl

    if span is None:
        first = _hourly_first_rollups(calls)
    else:
        first = pl.concat([_hourly_first(day, _who()) for day in _day_slices(calls, *span)])
    named = first.with_columns(
        pl.when(pl.col("svc")).then(pl.col("who")).otherwise(None).alias("dst_svc"),
        pl.lit("").alias("dst_own"),
        pl.when(pl.col("svc")).then(pl.lit("")).otherwise(pl.col("who")).alias("dst_pod"),
    ).with_columns(_name("dst_").alias("server"))
    return named.with_columns(
        (pl.col("server") + pl.lit(" ") + pl.col("endpoint")).alias("ep"),
    ).group_by("server", "ep", "hour").agg(
        pl.col("n").sum(), pl.col("errors").sum(), pl.col("p99").max(), pl.col("ip").first(),
        pl.col("port").first(), pl.col("node").unique().sort().head(3).alias("nodes"),
    )


def _by_hour_of_day(rows: Iterable[tuple[int, float]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for hour, v in rows:
        out[hour % DAY_HOURS].append(v)
    return out


def _endpoint_rules(hourly: Any, lo_h: int, hi_h: int) -> list[tuple[str, str, int, float, dict[str, Any],
                                                                        dict[str, Any]]]:
    hits = []
    for (ep,), g in hourly.group_by(["ep"]):
        rows = g.sort("hour").to_dicts()
        base = [r for r in rows if r["hour"] < lo_h and r["n"] >= MIN_CALLS]
        rate_b = _by_hour_of_day((r["hour"], r["errors"] / r["n"]) for r in base)
        p99_b = _by_hour_of_day((r["hour"], r["p99"]) for r in base
                                if r["p99"] is not None and r["n"] >= MIN_LATENCY_CALLS)
        for r in rows:
            if not lo_h <= r["hour"] < hi_h or r["n"] < MIN_CALLS:
                continue
            h = r["hour"] % DAY_HOURS
            b = rate_b.get(h, [])
            if len(b) >= MIN_DAYS and r["errors"] >= MIN_ERRORS:
                rate = r["errors"] / r["n"]
                z, med, mad = robust_z(rate, b, 0.01)
                if z >= Z:
                    hits.append(("error-rate", ep, r["hour"], z, r, {
                        "value": round(rate, 4), "calls": r["n"], "errors": r["errors"],
                        "baseline_median": round(med, 4), "baseline_mad": round(mad, 4),
                        "baseline_days": len(b), "z": round(z, 1)}))
            b = p99_b.get(h, [])
            if len(b) >= MIN_DAYS and r["p99"] is not None and r["n"] >= MIN_LATENCY_CALLS:
                med0 = statistics.median(b)
                z, med, mad = robust_z(r["p99"], b, max(0.1 * med0, 1.0))
                if z >= Z and r["p99"] >= LATENCY_RATIO * med:
                    hits.append(("latency", ep, r["hour"], z, r, {
                        "p99_ms": round(r["p99"], 2), "calls": r["n"], "baseline_median_ms": round(med, 2),
                        "baseline_mad_ms": round(mad, 2), "baseline_days": len(b), "z": round(z, 1)}))
    return hits


def _volume_rules(hourly: Any, base_lo_h: int, lo_h: int, hi_h: int) -> list[tuple[str, str, int, float,
                                                                                     dict[str, Any],
                                                                                     dict[str, Any]]]:
    import polars as pl

    per = hourly.group_by("server", "hour").agg(
        pl.col("n").sum(), pl.col("ip").first(), pl.col("port").first(), pl.col("nodes").first())
    hits = []
    for (server,), g in per.group_by(["server"]):
        got = {r["hour"]: r for r in g.to_dicts()}
        if not any(h < lo_h for h in got):
            continue  # a workload new in the window: new-peer's business
        first_h = max(base_lo_h, min(got))
        base = _by_hour_of_day((h, math.log1p(got[h]["n"] if h in got else 0)) for h in range(first_h, lo_h))
        proto_row = next(iter(got.values()))
        for hour in range(lo_h, hi_h):
            n = got[hour]["n"] if hour in got else 0
            b = base.get(hour % DAY_HOURS, [])
            if len(b) < MIN_DAYS:
                continue
            z, med, _mad = robust_z(math.log1p(n), b, 0.25)
            typical = math.expm1(med)
            if abs(z) >= Z and max(n, typical) >= MIN_CALLS:
                r = got.get(hour, {**proto_row, "n": 0})
                hits.append(("volume-spike" if z > 0 else "volume-drop", server, hour, abs(z), r, {
                    "calls": n, "baseline_median_calls": round(typical, 1),
                    "baseline_days": len(b), "z_log": round(z, 1)}))
    return hits


def _merge(hits: list[tuple[str, str, int, float, dict[str, Any], dict[str, Any]]]) -> list[Finding]:
    """Consecutive flagged hours of one rule and subject become one finding (worst hour's numbers)."""
    hits.sort(key=lambda h: (h[0], h[1], h[2]))
    out: list[Finding] = []
    run: list[Any] = []

    def close() -> None:
        if not run or (run[0][0] == "latency" and len(run) < LATENCY_HOURS):
            return
        rule, subject = run[0][0], run[0][1]
        worst = max(run, key=lambda h: h[3])
        r, ev = worst[4], dict(worst[5])
        start, end = run[0][2] * HOUR_NS, (run[-1][2] + 1) * HOUR_NS
        ev["hours"] = len(run)
        ev["worst_hour"] = _iso(worst[2] * HOUR_NS)
        text = {
            "error-rate": lambda: f"{subject}: error rate {ev['value'] * 100:.1f}% "
                                  f"({ev['errors']}/{ev['calls']}) "
                                  f"vs {ev['baseline_median'] * 100:.1f}% at this hour of day",
            "latency": lambda: f"{subject}: p99 {ev['p99_ms']:.1f} ms vs {ev['baseline_median_ms']:.1f} ms "
                               "at this hour of day",
            "volume-spike": lambda: f"{subject}: {ev['calls']} calls/h vs {ev['baseline_median_calls']:.0f} "
                                    "at this hour of day",
            "volume-drop": lambda: f"{subject}: {ev['calls']} calls/h vs {ev['baseline_median_calls']:.0f} "
                                   "at this hour of day",
        }[rule]()
        text += f" ({len(run)} hour(s) from {_iso(start)}, worst z {worst[3]:.1f})"
        out.append(Finding(rule, subject, start, end, text, ev, hosts=(r["ip"],) if r.get("ip") else (),
                           port=int(r.get("port") or 0), nodes=tuple(r.get("nodes") or ()), score=worst[3]))

    for h in hits:
        if run and (h[0], h[1]) == (run[-1][0], run[-1][1]) and h[2] == run[-1][2] + 1:
            run.append(h)
        else:
            close()
            run = [h]
    close()
    return out


def find_anomalies(frames: dict[str, Any], base_lo_ns: int, lo_ns: int, hi_ns: int) -> list[Finding]:
    """Findings for ``[lo, hi)`` against ``[base_lo, lo)``; ``frames`` maps kind -> LazyFrame
    covering ``[base_lo, hi)`` (calls; flows optional)."""
    lo_h = -(-lo_ns // HOUR_NS)  # first whole hour
    hi_h = hi_ns // HOUR_NS
    base_lo_h = -(-base_lo_ns // HOUR_NS)
    found = _new_peers(_edges(frames, lo_ns))
    if "calls" in frames:
        hourly = _hourly(frames["calls"], (base_lo_ns, hi_ns))
        found += _merge(_endpoint_rules(hourly, lo_h, hi_h) + _volume_rules(hourly, base_lo_h, lo_h, hi_h))
    return _ordered(found)


def find_anomalies_rollups(rollups: dict[str, Any], base_lo_ns: int, lo_ns: int, hi_ns: int) -> list[Finding]:
    """:func:`find_anomalies` from the hourly roll-ups: ``rollups`` maps ``calls_1h`` and
    ``peers_1h`` to LazyFrames over ``[base_lo, hi)`` whose ``span`` is 0 in the baseline and
    1 in the window (:func:`history._source.rollup_frames` with cuts base_lo, lo, hi)."""
    lo_h = -(-lo_ns // HOUR_NS)
    hi_h = hi_ns // HOUR_NS
    base_lo_h = -(-base_lo_ns // HOUR_NS)
    found = _new_peers(_edges_rollups(rollups["peers_1h"]))
    hourly = _hourly(rollups["calls_1h"], None)
    found += _merge(_endpoint_rules(hourly, lo_h, hi_h) + _volume_rules(hourly, base_lo_h, lo_h, hi_h))
    return _ordered(found)


def _ordered(found: list[Finding]) -> list[Finding]:
    order = {"new-peer": 0, "error-rate": 1, "latency": 2, "volume-drop": 3, "volume-spike": 4}
    found.sort(key=lambda f: (order[f.rule], -f.score, f.subject))
    return found
