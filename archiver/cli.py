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
    _url_arg(p)
    p.add_argument("--group", default=None, help="consumer group (default rawcap-archiver)")
    p.add_argument("--object-size", metavar="SIZE", help="target object size (archive.objectSize, 32Mi)")
    p.add_argument("--flush-interval", metavar="DURATION",
                   help="write an object at the latest after this long (archive.flushInterval, 2m)")
    p.add_argument("--retention", metavar="DURATION",
                   help="delete hours older than this (archive.retention; 0 = keep; prefer a "
                        "bucket lifecycle rule)")
    p.add_argument("--metrics-port", metavar="PORT", type=int, help="serve /metrics here (metrics.port)")
    p.add_argument("--uploads", metavar="N", type=int, default=4, help="parallel uploads (default 4)")
    p.add_argument("--max-records", metavar="N", type=int, default=1000,
                   help="records per fetch (getmany max_records, default 1000)")
    p.add_argument("--session-timeout", metavar="SECONDS", type=float, default=10.0,
                   help="consumer group session timeout (default 10)")
    p.add_argument("--shutdown-timeout", metavar="SECONDS", type=float, default=60.0,
                   help="on SIGTERM, wait this long for the final uploads (default 60)")
    p.set_defaults(func=run_archive, service=True)
    asub = p.add_subparsers(dest="archive_command", metavar="ACTION")
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
