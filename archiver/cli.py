"""``rawcap archive``: the archive consumer, and ``rawcap archive ls``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rawcap.config import Config
from rawcap.timeparse import parse_window

__all__ = ("add_commands",)

DESCRIPTION = """\
Archive every batch of rawcap.packets into object storage (consumer group
rawcap-archiver; add instances to scale, they split the partitions).

Objects: node=N/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first>-<last>.rcsg, whole
batches byte for byte; a small index object per data object under index/<hour>/ lets
readers find a window without listing the bucket (rawcap pcap export --source archive).
Offsets are committed only after an object and its index are written; after a crash the
archiver completes or skips what exists, so every batch is archived exactly once.

URLs: s3://BUCKET/PREFIX (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, or the usual AWS credential chain), gs://BUCKET/PREFIX
(GOOGLE_APPLICATION_CREDENTIALS or workload identity), az://CONTAINER/PREFIX
(AZURE_STORAGE_ACCOUNT_NAME + key, SAS or workload identity), file:///DIR.
SIGTERM: final flush, commit, exit 0. See docs/archiver.md.
"""

TABLES_DESCRIPTION = """\
Write rawcap.calls and rawcap.flows into the archive as Parquet, one row per record:
kind=calls|flows/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first>-<last>.parquet
(plain Hive partitions: Spark, Trino, Athena and rawcap trends / anomalies read them).

One consumer group per table (rawcap-tables-calls, rawcap-tables-flows). An object is one
PUT, its name says which offsets it holds, offsets are committed after it is written; after
a crash the writer skips what existing objects hold, so every record is written exactly once.
Each object is followed by its hourly roll-ups (kind=calls_1h, flows_1h, peers_1h: counts,
bytes, latency sketches, peers), which rawcap trends and anomalies read for whole hours.
--rollup-backfill writes the roll-ups of objects written before them, once, and exits.
Columns: schemas/tables.py, schemas/rollups.py, docs/history.md. SIGTERM: final flush,
commit, exit 0.
"""


def _url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", metavar="BUCKET_URL", help="archive URL (archive.url, env RAWCAP_ARCHIVE_URL)")


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "archive",
        parents=[parent],
        help="archive consumer: rawcap.packets -> object storage",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _writer_args(p, "consumer group (default rawcap-archiver)",
                 "target object size (archive.objectSize, 32Mi)", "archive.flushInterval, 2m")
    p.add_argument("--retention", metavar="DURATION",
                   help="delete hours older than this (archive.retention; 0 = keep; prefer a "
                        "bucket lifecycle rule)")
    p.add_argument("--metrics-port", metavar="PORT", type=int, help="serve /metrics here (metrics.port)")
    _consumer_args(p)
    p.set_defaults(func=run_archive, service=True)
    asub = p.add_subparsers(dest="archive_command", metavar="ACTION")
    t = asub.add_parser(
        "tables",
        parents=[parent],
        help="rawcap.calls and rawcap.flows -> Hive-partitioned Parquet",
        description=TABLES_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _writer_args(t, "consumer group prefix (default rawcap-tables: rawcap-tables-calls, ...)",
                 "cut an object after this much record data (archive.tables.objectSize, 64Mi)",
                 "archive.tables.flushInterval, 1h")
    t.add_argument("--kinds", default="calls,flows", metavar="calls,flows",
                   help="which tables to write (default both; one consumer group each)")
    t.add_argument("--row-group-rows", metavar="N", help="rows per row group (archive.tables.rowGroupRows)")
    t.add_argument("--rollup-backfill", action="store_true",
                   help="write the missing roll-ups of the objects of --from..--to, then exit")
    t.add_argument("--from", dest="from_", metavar="T", help="with --rollup-backfill: start (default -90d)")
    t.add_argument("--to", metavar="T", help="with --rollup-backfill: end (default now)")
    _consumer_args(t)
    t.set_defaults(func=run_tables, service=True)
    ls = asub.add_parser(
        "ls",
        parents=[parent],
        help="what the archive holds per node and hour",
        description="Per node and hour: objects, batches, packets, bytes and the sequence "
        "numbers held (with missing/repeated counts), read from the index only.",
    )
    _url_arg(ls)
    ls.add_argument("--from", dest="from_", metavar="T", help="window start (default -24h)")
    ls.add_argument("--to", metavar="T", help="window end (default now)")
    ls.add_argument("--node", action="append", metavar="NAME", help="node(s); repeat or comma-separate")
    ls.add_argument("--json", action="store_true", help="one JSON object per node and hour")
    ls.set_defaults(func=run_ls)


def _writer_args(p: argparse.ArgumentParser, group: str, size: str, flush: str) -> None:
    _url_arg(p)
    p.add_argument("--group", default=None, help=group)
    p.add_argument("--object-size", metavar="SIZE", help=size)
    p.add_argument("--flush-interval", metavar="DURATION",
                   help=f"write an object at the latest after this long ({flush})")


def _consumer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uploads", metavar="N", type=int, default=4, help="parallel uploads (default 4)")
    p.add_argument("--max-records", metavar="N", type=int, default=1000,
                   help="records per fetch (getmany max_records, default 1000)")
    p.add_argument("--session-timeout", metavar="SECONDS", type=float, default=10.0,
                   help="consumer group session timeout (default 10)")
    p.add_argument("--shutdown-timeout", metavar="SECONDS", type=float, default=60.0,
                   help="on SIGTERM, wait this long for the final uploads (default 60)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o = {
        "archive.url": getattr(args, "url", None),
        "archive.objectSize": getattr(args, "object_size", None),
        "archive.flushInterval": getattr(args, "flush_interval", None),
        "archive.retention": getattr(args, "retention", None),
        "metrics.port": getattr(args, "metrics_port", None),
    }
    return {k: v for k, v in o.items() if v is not None}


async def run_archive(args: argparse.Namespace, cfg: Config) -> int:
    from ._archiver import GROUP, Archiver

    cfg = cfg.with_overrides(_overrides(args))
    archiver = Archiver(
        cfg,
        group=args.group or GROUP,
        uploads=args.uploads,
        max_records=args.max_records,
        session_timeout=args.session_timeout,
        shutdown_timeout=args.shutdown_timeout,
    )
    code = await archiver.run()
    print(archiver.summary.line(), file=sys.stderr, flush=True)
    return code


async def run_tables(args: argparse.Namespace, cfg: Config) -> int:
    import signal

    import anyio

    from schemas.errors import ConfigError

    from ._tables import TABLES_GROUP, TableArchiver

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("calls", "flows")]
    if bad or not kinds:
        raise ConfigError(f"--kinds {args.kinds!r} is invalid: expected calls, flows or calls,flows")
    over = {"archive.url": args.url, "archive.tables.objectSize": args.object_size,
            "archive.tables.flushInterval": args.flush_interval,
            "archive.tables.rowGroupRows": args.row_group_rows}
    cfg = cfg.with_overrides({k: v for k, v in over.items() if v is not None})
    if args.rollup_backfill:
        return await _backfill(args, cfg, list(dict.fromkeys(kinds)))
    if args.from_ or args.to:
        raise ConfigError("--from and --to go with --rollup-backfill")
    writers = [
        TableArchiver(cfg, kind, group=f"{args.group or TABLES_GROUP}-{kind}", own_signals=False,
                      uploads=args.uploads, max_records=args.max_records,
                      session_timeout=args.session_timeout, shutdown_timeout=args.shutdown_timeout)
        for kind in dict.fromkeys(kinds)
    ]
    codes: list[int] = []

    async def one(w: TableArchiver) -> None:
        codes.append(await w.run())
        print(f"{w.kind}: {w.summary.line()}", file=sys.stderr, flush=True)

    async def signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                for w in writers:
                    w.on_signal(signum)

    async with anyio.create_task_group() as outer:
        outer.start_soon(signals)
        async with anyio.create_task_group() as tg:
            for w in writers:
                tg.start_soon(one, w)
        outer.cancel_scope.cancel()
    return max(codes, default=1)


async def _backfill(args: argparse.Namespace, cfg: Config, kinds: list[str]) -> int:
    import time

    from rawcap.archive import ArchiveStore
    from schemas.tables import HOUR_NS

    from ._tables import Backfill, backfill

    lo, hi = parse_window(args.from_ or "-90d", args.to)
    tty = sys.stderr.isatty()
    t0 = time.monotonic()

    def progress(b: Backfill) -> None:
        if tty:
            print(f"\rrolled up {b.built} objects, {b.bytes_read / 1e6:.0f} MB read", end="", file=sys.stderr)

    b = await backfill(ArchiveStore.from_config(cfg), kinds, lo // HOUR_NS, -(-hi // HOUR_NS),
                       workers=max(1, min(args.uploads, 4)),
                       row_group_rows=int(cfg.get("archive.tables.rowGroupRows")), progress=progress)
    if tty:
        print(file=sys.stderr)
    for err in b.errors[:20]:
        print(f"rawcap: roll-up failed: {err}", file=sys.stderr)
    print(f"backfill: {b.raw} objects in range, {b.complete} had their roll-ups, {b.built} rolled up "
          f"({b.bytes_read / 1e6:.1f} MB read, {b.written} roll-up objects, {b.bytes_written / 1e6:.2f} MB "
          f"written), {len(b.errors)} failed, {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 1 if b.errors else 0


async def run_ls(args: argparse.Namespace, cfg: Config) -> int:
    from rawcap.archive import ArchiveStore

    from ._ls import HEADER, format_row, hour_summaries

    cfg = cfg.with_overrides(_overrides(args))
    lo, hi = parse_window(args.from_ or "-24h", args.to)
    nodes = [n.strip() for item in args.node or [] for n in item.split(",") if n.strip()] or None
    rows = await hour_summaries(ArchiveStore.from_config(cfg), lo, hi, nodes)
    if args.json:
        for row in rows:
            print(json.dumps({k: v for k, v in row.items() if k != "path"}))
        return 0
    if rows:
        print(HEADER)
    for row in rows:
        print(format_row(row))
    if not rows:
        print("rawcap: the archive holds nothing in that window", file=sys.stderr)
    return 0
