"""``rawcap trends`` and ``rawcap anomalies``: questions over weeks of calls and flows.

Polars and matplotlib are imported when a command runs, never at start-up of another one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rawcap.config import Config, parse_duration
from rawcap.timeparse import parse_time, parse_window
from schemas.errors import ConfigError

__all__ = ("add_commands",)

TRENDS = """\
Metrics per time bucket and group over calls and flows kept in the archive (Parquet, written
by rawcap archive tables) or, for recent ranges, on Kafka.

  rawcap trends --from -7d --by service --metric requests,error-rate,p99
  rawcap trends --from -1d --every 10m --by endpoint --namespace shop --metric p99 --png p99.png

Metrics (several at once): requests, errors, error-rate, p50, p99 (latency in ms; calls) and
bytes, flows (flows). A call or flow counts for its serving side (--side client: the caller).
--source auto reads the last history.kafkaRecent (2h) of the range from Kafka (when Kafka
still holds it) and the rest from the archive. Whole hours are read from the hourly roll-ups
the table writer keeps when the question allows it (--every a multiple of 1h, serving side,
no --host/--port/--namespace/--pod, no flows metric): p50/p99 are then within 2 % of the
exact value; --exact reads every raw row. The source line on stderr says which was used.
See docs/history.md.
"""

ANOMALIES = """\
What changed in [--from, --to) against the baseline [--baseline, --from): new peers (a
workload talking to a service, address or port it never used), an endpoint's error rate or
p99 latency outside its own hour-of-day baseline (robust z-score >= 4 over median and MAD,
with minimum counts), and call volume spikes and drops per workload. Each finding prints
its numbers and the rawcap pcap export command for its packets. Rules: docs/history.md.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="T", help="end of the range (default now)")
    p.add_argument("--source", default="auto", choices=("auto", "archive", "kafka"),
                   help="where to read (default auto: see above)")
    p.add_argument("--url", metavar="BUCKET_URL", help="archive URL (archive.url, env RAWCAP_ARCHIVE_URL)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    g = p.add_argument_group("filters (flags AND together; repeat a flag for OR)")
    g.add_argument("--node", action="append", default=[], metavar="NAME", help="captured on node NAME")
    g.add_argument("--host", action="append", default=[], metavar="IP", help="either address equals IP")
    g.add_argument("--port", action="append", default=[], metavar="PORT", help="either port equals PORT")
    g.add_argument("--proto", choices=("tcp", "udp"), help="transport protocol")
    g.add_argument("--namespace", action="append", default=[], metavar="NS", help="either end is in NS")
    g.add_argument("--pod", action="append", default=[], metavar="REGEX",
                   help="either end's pod name matches REGEX")


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    t = sub.add_parser("trends", parents=[parent], help="metrics over time from the archive (or Kafka)",
                       description=TRENDS, formatter_class=fmt)
    t.add_argument("--from", dest="start", metavar="T", default="-7d", help="start (default -7d)")
    t.add_argument("--every", default="1h", metavar="DURATION", help="bucket width (default 1h)")
    t.add_argument("--by", default="service", help="namespace|service|pod|endpoint|node (default service)")
    t.add_argument("--metric", action="append", metavar="M[,M...]",
                   help="requests|errors|error-rate|p50|p99|bytes|flows (default requests,error-rate,p99)")
    t.add_argument("--side", default="server", choices=("server", "client"),
                   help="attribute calls and flows to the serving side (default) or the caller")
    t.add_argument("--top", type=int, default=20, metavar="N", help="groups in the table (0: all)")
    t.add_argument("--png", metavar="FILE", help="also draw the trend into a PNG chart")
    t.add_argument("--exact", action="store_true",
                   help="read raw rows only (exact percentiles; slower over long ranges)")
    _common(t)
    t.set_defaults(func=run_trends)
    a = sub.add_parser("anomalies", parents=[parent], help="new peers, error/latency/volume anomalies",
                       description=ANOMALIES, formatter_class=fmt)
    a.add_argument("--from", dest="start", metavar="T", default="-1d", help="window start (default -1d)")
    a.add_argument("--baseline", metavar="T", default="-7d",
                   help="baseline start (default -7d); the baseline ends at --from")
    a.add_argument("--limit", type=int, default=50, metavar="N", help="findings printed (default 50)")
    a.add_argument("--exact", action="store_true",
                   help="read raw rows only (exact p99; slower over long ranges)")
    _common(a)
    a.set_defaults(func=run_anomalies)


def _filters(args: argparse.Namespace) -> Any:
    from ._trends import Filters

    ports = []
    for p in args.port:
        try:
            port = int(p)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port {p!r} is invalid: expected a number 0-65535")
        ports.append(port)
    split = [n.strip() for item in args.node for n in item.split(",") if n.strip()]
    return Filters(nodes=tuple(split), hosts=tuple(args.host), ports=tuple(ports), proto=args.proto or "",
                   namespaces=tuple(args.namespace), pods=tuple(args.pod))


async def _frames(cfg: Config, args: argparse.Namespace, kinds: list[str], lo: int, hi: int,
                  rollups: dict[str, str] | None = None, cuts: list[int] | None = None,
                  ) -> tuple[dict[str, Any], Any]:
    """kind -> LazyFrame over [lo, hi), and the Source; ``rollups`` (kind -> roll-up kind)
    names the kinds to read from the hourly roll-ups (``span``: interval of ``cuts``, default
    [lo, hi]) when every raw object has them; the other kinds, or all when roll-ups cannot
    answer, are raw rows."""
    import polars as pl

    from ._source import Source, archive_frame, choose_source, kafka_frame, rollup_frames

    if args.url:
        cfg = cfg.with_overrides({"archive.url": args.url})
    now = time.time_ns()
    plan = await choose_source(cfg, args.source, lo, hi, now)
    src = Source("+".join(name for name, _lo, _hi in plan))
    frames = {}
    if rollups:
        got = await rollup_frames(cfg, args.source, list(rollups.values()), cuts or [lo, hi], now, src)
        if isinstance(got, str):
            src.objects = src.bytes = src.raw_hours = 0
            src.notes.update(dict.fromkeys(rollups, got))
        else:
            frames = {kind: got[rk] for kind, rk in rollups.items()}
            src.rolled = list(rollups)
    for kind in kinds:
        if kind in frames:
            continue
        parts = []
        for name, a, b in plan:
            if name == "archive":
                parts.append(archive_frame(cfg, kind, a, b, src))
            else:
                parts.append(await kafka_frame(cfg, kind, a, b))
        frames[kind] = parts[0] if len(parts) == 1 else pl.concat(parts)
    return frames, src


def _need_matplotlib() -> None:
    """--png draws with matplotlib, an optional extra (`rawcap[png]`, not in the image)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--png needs matplotlib, which is not installed: pip install 'rawcap[png]'")


async def run_trends(args: argparse.Namespace, cfg: Config) -> int:
    from ._render import trend_json, trend_png, trend_table
    from ._trends import ROLLUP_OF_KIND, TrendQuery, trends

    lo, hi = parse_window(args.start, args.to)
    metrics = tuple(m.strip() for item in (args.metric or ["requests,error-rate,p99"])
                    for m in item.split(",") if m.strip())
    try:
        every = parse_duration(args.every)
    except ValueError as exc:
        raise ConfigError(f"--every {args.every!r} is invalid: expected {exc}") from None
    if args.png:
        _need_matplotlib()
    q = TrendQuery(lo, hi, int(every * 1e9), args.by, tuple(dict.fromkeys(metrics)), args.side,
                   _filters(args), args.exact)
    reasons = {kind: q.rollup_reason(kind) for kind in q.kinds()}
    frames, src = await _frames(cfg, args, q.kinds(), lo, hi,
                                {k: ROLLUP_OF_KIND[k] for k, why in reasons.items() if not why})
    src.notes.update({k: why for k, why in reasons.items() if why})
    per, total = trends(q, frames, src.rolled)
    first = lo // q.every_ns * q.every_ns
    buckets = list(range(first, hi, q.every_ns))
    if args.png:
        title = (f"rawcap trends by {q.by}: {', '.join(q.metrics)}, every {args.every}, "
                 f"from {src.describe()}")
        trend_png(args.png, per, total, q.metrics, buckets, q.by, title)
    if args.json:
        trend_json(sys.stdout, per, q.metrics, q.by, q.every_ns / 1e9)
    elif len(total):
        trend_table(sys.stdout, per, total, q.metrics, buckets, q.by, args.top)
    if not len(total):
        print(f"rawcap: no calls or flows in that range ({src.describe()})", file=sys.stderr)
    else:
        print(f"source: {src.describe()}", file=sys.stderr)
    return 0


async def run_anomalies(args: argparse.Namespace, cfg: Config) -> int:
    from ._anomalies import find_anomalies, find_anomalies_rollups
    from ._trends import Filters

    lo, hi = parse_window(args.start, args.to)
    base_lo = parse_time(args.baseline, what="--baseline")
    if base_lo >= lo:
        raise ConfigError("--baseline must be before --from (the baseline runs from --baseline to --from)")
    flt = _filters(args)
    why = "--exact" if args.exact else ("filters: roll-ups keep no client side" if flt != Filters() else "")
    # from roll-ups: calls_1h for the endpoint and volume rules, peers_1h (from calls and
    # flows) for the new-peer rule
    rolled = None if why else {"calls": "calls_1h", "flows": "peers_1h"}
    frames, src = await _frames(cfg, args, ["calls", "flows"], base_lo, hi, rolled, [base_lo, lo, hi])
    if src.rolled:
        found = find_anomalies_rollups({"calls_1h": frames["calls"], "peers_1h": frames["flows"]},
                                       base_lo, lo, hi)
    else:
        src.notes = src.notes or dict.fromkeys(["calls", "flows"], why)
        frames = {k: lf.filter(flt.expr(k)) for k, lf in frames.items()}
        found = find_anomalies(frames, base_lo, lo, hi)
    out = sys.stdout
    for i, f in enumerate(found[: args.limit] if args.limit else found, 1):
        if args.json:
            out.write(json.dumps(f.as_dict(i)) + "\n")
            continue
        out.write(f"[{i}] {f.rule:<12} {f.summary}\n")
        out.write("    evidence: " + ", ".join(f"{k}={v}" for k, v in f.evidence.items()
                                                  if k != "baseline_peers") + "\n")
        out.write(f"    packets:  {f.export_command(f'anomaly-{i}.pcapng')}\n")
    print(f"{len(found)} finding(s); source: {src.describe()}", file=sys.stderr)
    return 0
