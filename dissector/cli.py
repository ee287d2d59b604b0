"""``rawcap dissect``, ``rawcap calls`` and ``rawcap dissection start|stop|status``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any

from rawcap.config import Config
from rawcap.timeparse import parse_window
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from schemas.calls import Call

__all__ = ("add_commands",)

SOURCES_HELP = "kafka (default), local, archive or snapshot:ID"
L7 = ("http1", "http2", "grpc", "dns", "redis", "postgres")


def _dissect(args: argparse.Namespace, cfg: Config) -> Any:
    from rawcap.gctune import tune_gc

    tune_gc()
    if args.pcap:
        return _dissect_pcap(args, cfg)
    import anyio

    from ._consumer import run_dissect  # Kafka only when needed

    return anyio.run(run_dissect, args, cfg)


def _dissect_pcap(args: argparse.Namespace, cfg: Config) -> int:
    from ._run import CallOutput, db_path, dissect_pcap, dissector_from_config, stderr_stats
    from ._store import CallStore

    if args.follow or args.from_ or args.to:
        raise ConfigError("--pcap dissects a file: it takes no --from/--to/--follow")
    if args.node:
        cfg = cfg.with_overrides({"node.name": args.node})
    workloads = None
    if args.k8s:  # a file's packets may come from anywhere: names only when asked for
        import anyio

        from ._workloads import load_workloads

        workloads = anyio.run(load_workloads, cfg, True)
    store = None if args.no_store else CallStore(db_path(cfg, args.db),
                                                 cfg.get("tap.capture.dbMaxSize"))
    quiet = args.quiet
    out = CallOutput(store=store, out=None if quiet else sys.stdout, as_json=args.json,
                     workloads=workloads)
    d = dissector_from_config(cfg, out, redact=not args.no_redact)
    try:
        dissect_pcap(args.pcap, d)
    finally:
        out.close()  # a truncated file: what came before it is printed and stored
        sys.stdout.flush()
    if args.stats:
        stderr_stats(d)
    return 0


def _calls(args: argparse.Namespace, cfg: Config) -> int:
    from ._run import db_path
    from ._store import CallStore
    from ._text import lines

    path = db_path(cfg, args.db)
    if not path.exists():
        raise ConfigError(f"no local calls store at {path}: run 'rawcap dissect' first "
                          "(or set dissector.dbPath)")
    lo = hi = None
    if args.from_ or args.to:
        lo, hi = parse_window(args.from_, args.to)
    from ._workloads import CallFilter

    by_workload = CallFilter(args.namespace, args.pod)
    transport = args.transport
    match: Callable[[Call], bool] | None = None
    if transport or not by_workload.empty:
        def _match(c: Call) -> bool:
            return (not transport or c.transport == transport) and by_workload(c)

        match = _match
    port = None
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port {args.port} is out of range (0-65535)")
        port = args.port
    store = CallStore(path, cfg.get("tap.capture.dbMaxSize"))
    try:
        found = store.query(lo_ns=lo, hi_ns=hi, node=args.node, proto=args.proto,
                            host=args.host, port=port, limit=args.limit, match=match)
        if args.json:
            for c in found:
                sys.stdout.write(json.dumps(c.as_dict(), default=str) + "\n")
        else:
            while chunk := list(islice(found, 1024)):  # text lines written a chunk at a time
                sys.stdout.write(lines(chunk))
    finally:
        store.close()
    return 0


def _dissection(args: argparse.Namespace, cfg: Config) -> Any:
    import anyio

    from ._consumer import dissection_switch

    return anyio.run(dissection_switch, args, cfg)


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "dissect", parents=[parent], help="reconstruct L7 calls from raw packets",
        description="Dissect a time range of rawcap.packets (exact offsets), live traffic "
                    "(--follow, consumer group rawcap-dissector) or a pcap file (--pcap). "
                    "Calls go to rawcap.calls and to the local store that 'rawcap calls' reads.")
    p.add_argument("--from", dest="from_", metavar="T", help="range start (ISO-8601, -5m, now)")
    p.add_argument("--to", metavar="T", help="range end (default now)")
    p.add_argument("--node", help="only this node's packets (Kafka key)")
    p.add_argument("--source", default="kafka", help=SOURCES_HELP)
    p.add_argument("--follow", action="store_true",
                   help="keep dissecting live traffic (honours rawcap dissection stop, "
                        "tap.capture.stopped and tap.capture.stopAfter)")
    p.add_argument("--pcap", metavar="FILE", help="dissect a pcap/pcapng file instead")
    p.add_argument("--json", action="store_true", help="print calls as JSON lines")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print calls")
    p.add_argument("--stats", action="store_true", help="print counters to stderr at the end")
    p.add_argument("--no-store", action="store_true", help="do not write the local store")
    p.add_argument("--no-publish", action="store_true",
                   help="do not produce to rawcap.calls (Kafka sources)")
    p.add_argument("--no-redact", action="store_true",
                   help="keep Authorization/Cookie/... values (default: redacted)")
    p.add_argument("--db", metavar="PATH", help="local store (default dissector.dbPath)")
    p.add_argument("--k8s", action=argparse.BooleanOptionalAction, default=None,
                   help="name each call's workloads (pod/service/node and namespace, as of "
                        "the request time) from rawcap.k8s; default: on for Kafka sources "
                        "(an unreachable topic is a warning), off for --pcap")
    p.set_defaults(func=_dissect, service=True)

    c = sub.add_parser("calls", parents=[parent], help="query the local calls store",
                       description="List dissected calls from the local store.")
    c.add_argument("--from", dest="from_", metavar="T")
    c.add_argument("--to", metavar="T")
    c.add_argument("--node")
    c.add_argument("--host", metavar="IP", help="client or server address")
    c.add_argument("--port", type=int, help="client or server port")
    c.add_argument("--proto", choices=L7, help="application protocol")
    c.add_argument("--transport", choices=("tcp", "udp"))
    c.add_argument("--namespace", action="append", default=[], metavar="NS",
                   help="either end's pod or service is in NS (repeatable: any of them)")
    c.add_argument("--pod", action="append", default=[], metavar="REGEX",
                   help="either end's pod name matches REGEX (repeatable: any of them); with "
                        "--namespace, the same end must satisfy both")
    c.add_argument("--limit", type=int)
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--db", metavar="PATH")
    c.set_defaults(func=_calls)

    s = sub.add_parser("dissection", parents=[parent], help="real-time dissection switch",
                       description="Flip real-time dissection on rawcap.control.")
    s.add_argument("action", choices=("start", "stop", "status"))
    s.add_argument("--stop-after", metavar="DURATION",
                   help="with start: auto-stop after this long idle (default "
                        "tap.capture.stopAfter)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_dissection)
