"""Forensics commands: ``consume``, ``pcap export|import``, ``snapshot ...``.

Every command reads through :class:`rawcap.window.WindowReader`, so ``--source`` (kafka,
local, archive, snapshot:ID), ``--node`` and the filters mean the same thing everywhere.
Data goes to stdout, progress and notices to stderr; a progress bar appears only when
stderr is a terminal.

Workload context (``--namespace``/``--pod``, ``consume --workloads``, ``pcap export
--comment-workload``) reads ``rawcap.k8s`` to its end once per command
(:meth:`rawcap.workloads.Workloads.load`), or the copy a snapshot stored; nothing is read
when none of these flags is given.

Each command imports what it runs when it runs (``pcap export`` never loads the snapshot
store, the import code or the workload index unless its flags need them): start-up is part
of every command's time.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rawcap.filters import add_filter_arguments, filter_from_args
from rawcap.packet import format_addr, format_flags, parse_l4
from rawcap.timeparse import format_ns, parse_window
from schemas.errors import ConfigError, RawcapError

if TYPE_CHECKING:
    from rawcap.config import Config
    from rawcap.filters import PacketFilter
    from rawcap.window import WindowReader
    from rawcap.workloads import Workloads

__all__ = ("add_commands",)

log = logging.getLogger("rawcap.forensics")


def _sigterm_interrupts() -> None:
    """SIGTERM ends a long command like Ctrl-C does: temporary files are removed, exit 130."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _notice(msg: str) -> None:
    print(f"rawcap: {msg}", file=sys.stderr)


@contextmanager
def _progress(what: str, lo: int, hi: int) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar over the window's time span, only on a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    span = max(1, hi - lo)
    with Progress(
        TextColumn(f"{what}"),
        BarColumn(),
        TextColumn("{task.fields[n]} packets"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=span, n=0)
        last = [0.0]

        def update(n: int, ts: int) -> None:
            now = time.monotonic()
            if now - last[0] > 0.1:
                last[0] = now
                bar.update(task, completed=min(span, max(0, ts - lo)), n=n)

        yield update


def _nodes(args: argparse.Namespace) -> list[str] | None:
    out: list[str] = []
    for item in getattr(args, "node", None) or []:
        out.extend(n.strip() for n in item.split(",") if n.strip())
    return out or None


async def _workloads(cfg: Config, *, record: bool = False) -> Workloads:
    """``rawcap.k8s`` read to its end (once per command)."""
    from rawcap.snapshots import RecordingWorkloads
    from rawcap.workloads import Workloads

    wl = await (RecordingWorkloads if record else Workloads).load(cfg)
    if wl.bad:
        _notice(f"warning: {wl.bad} unreadable rawcap.k8s record(s) skipped")
    if not wl.records:
        _notice("warning: rawcap.k8s is empty (is 'rawcap k8s-watch' running?): no packet has a workload")
    return wl


async def _reader(
    args: argparse.Namespace,
    cfg: Config,
    flt: PacketFilter,
    *,
    follow: bool = False,
    want_workloads: bool = False,
) -> tuple[WindowReader, Any, Workloads | None]:
    """Window + source -> an (unopened) reader, the effective (bound) filter and the workload
    index (None unless ``want_workloads`` or a filter has ``--namespace``/``--pod``)."""
    from rawcap.window import WindowReader

    source = getattr(args, "source", "kafka") or "kafka"
    window = getattr(args, "window", None)  # parsed by _prepare_export already
    if source.startswith("snapshot:"):
        from rawcap.snapshots import open_snapshot

        snap = await open_snapshot(
            cfg, source.split(":", 1)[1],
            window=parse_window(args.from_, args.to) if (args.from_ or args.to) else None,
            nodes=_nodes(args), flt=flt, want_workloads=want_workloads,
            load_workloads=lambda: _workloads(cfg),
        )
        return snap.reader, snap.filter, snap.workloads
    if source not in ("kafka", "local", "archive"):
        raise ConfigError(f"--source {source!r} is invalid: expected kafka, local, archive or snapshot:ID")
    lo, hi = window or parse_window(args.from_, args.to)
    reader = WindowReader(cfg, lo, hi, nodes=_nodes(args), source=source, follow=follow,
                          kafka_lookup=getattr(args, "kafka_lookup", None))
    wl = None
    if want_workloads or flt.needs_workloads:
        wl = await _workloads(cfg)
        flt = flt.bind(wl)
    return reader, flt, wl


def _report(reader: WindowReader, what: str) -> None:
    st = reader.stats
    for note in st.recycled:
        _notice(f"warning: {note}")
    if st.corrupt:
        _notice(
            f"warning: {st.corrupt} corrupt batch(es) skipped"
            + (" and sent to rawcap.dlq" if reader.source == "kafka" else "")
        )
    if st.packets == 0:
        _notice(f"no packets in the window {format_ns(reader.lo)} .. {format_ns(reader.hi)}: {what}")


# -- pcap export ---------------------------------------------------------------------------
def _prepare_export(args: argparse.Namespace, cfg: Config) -> None:
    """Runs before the event loop is even imported (``rawcap.cli`` calls it right after the
    configuration is loaded): parses the window once (``args.window``) and, for a Kafka read,
    starts its Kafka side in a thread (``args.kafka_lookup``,
    :func:`rawcap.window.start_kafka_lookup`: metadata, offsets, the first fetch), so that the
    broker works while asyncio and the export's modules are imported. Bad input is left for
    the command to report, as without this."""
    source = getattr(args, "source", "kafka") or "kafka"
    if source != "kafka" or not args.output:
        return
    try:
        lo, hi = parse_window(args.from_, args.to)
    except RawcapError:
        return
    args.window = (lo, hi)
    if lo <= hi:
        from rawcap.window import start_kafka_lookup

        args.kafka_lookup = start_kafka_lookup(cfg, lo, _nodes(args))


async def _cmd_export(args: argparse.Namespace, cfg: Config) -> int:
    lookup = getattr(args, "kafka_lookup", None)
    try:
        return await _export(args, cfg)
    finally:
        if lookup is not None:
            lookup.close()  # normally the reader's to close; not when the export failed before it


async def _export(args: argparse.Namespace, cfg: Config) -> int:
    if not args.output:
        raise ConfigError("pcap export needs -o FILE (or -o - for stdout)")
    from rawcap.malloc import tune as malloc_tune

    from ._export import OutputFile, write_capture

    malloc_tune()  # ~1 MiB fetch, zstd and EPB buffers from the heap, not fresh mmap pages

    flt = filter_from_args(args)
    comment_workload = getattr(args, "comment_workload", False)
    if comment_workload and args.format != "pcapng":
        raise ConfigError("--comment-workload needs --format pcapng (classic pcap has no comments)")
    reader, flt, wl = await _reader(args, cfg, flt, want_workloads=comment_workload)
    _sigterm_interrupts()
    out = OutputFile(args.output)
    try:
        async with reader:
            with _progress("exporting", reader.lo, reader.hi) as progress:
                n = await write_capture(
                    reader,
                    out.fh,
                    fmt=args.format,
                    comment_node=args.comment_node,
                    workloads=wl if comment_workload else None,
                    match=None if flt.empty else flt.match,
                    progress=progress,
                )
            await reader.check_nodes()
        out.commit()
    except BaseException:
        out.abort()
        raise
    _report(reader, "wrote an empty capture" if args.output != "-" else "wrote an empty capture to stdout")
    if args.output != "-" and n:
        _notice(
            f"wrote {n} packets ({reader.stats.bytes} bytes) from {len(reader.stats.nodes)} node(s) "
            f"to {args.output}"
        )
    return 0


# -- pcap import ---------------------------------------------------------------------------
async def _cmd_import(args: argparse.Namespace, cfg: Config) -> int:
    from ._import import import_capture

    with _progress("importing", 0, 1) as progress:
        stats = await import_capture(
            cfg,
            args.file,
            node=args.node,
            iface=args.iface,
            progress=None if progress is None else (lambda n, ts: progress(n, 0)),
        )
    _notice(f"imported {stats['packets']} packets in {stats['batches']} batches as node {stats['node']}")
    return 0


# -- consume -------------------------------------------------------------------------------
def _line(p: Any, wl: Workloads | None = None) -> str:
    l4 = parse_l4(p.data)
    t = format_ns(p.ts_ns)
    if l4 is None:
        et = int.from_bytes(p.data[12:14], "big") if len(p.data) >= 14 else 0
        return f"{t} {p.node} {p.iface} other ethertype=0x{et:04x} len={p.origlen}"
    s, d = format_addr(l4.src), format_addr(l4.dst)
    if l4.family == 6:
        s, d = f"[{s}]", f"[{d}]"
    if l4.proto == 6:
        line = f"{t} {p.node} {s}:{l4.sport} > {d}:{l4.dport} tcp len={p.origlen} [{format_flags(l4.flags)}]"
    else:
        line = f"{t} {p.node} {s}:{l4.sport} > {d}:{l4.dport} udp len={p.origlen}"
    if wl is not None:
        comment = wl.comment(p.data, p.ts_ns)
        if comment is not None:
            line += " " + comment.decode()
    return line


def _json(p: Any, wl: Workloads | None = None) -> str:
    l4 = parse_l4(p.data)
    doc: dict[str, Any] = {
        "ts_ns": p.ts_ns,
        "time": format_ns(p.ts_ns),
        "node": p.node,
        "iface": p.iface,
        "len": p.origlen,
        "caplen": p.caplen,
    }
    if l4 is not None:
        doc.update(
            src=format_addr(l4.src),
            sport=l4.sport,
            dst=format_addr(l4.dst),
            dport=l4.dport,
            proto="tcp" if l4.proto == 6 else "udp",
        )
        if l4.proto == 6:
            doc["flags"] = format_flags(l4.flags)
        if l4.fragment:
            doc["fragment"] = True
        if wl is not None:  # as rawcap flows --json: the workload at the packet's time, or null
            src, dst = wl.ends(p.data, p.ts_ns)
            doc["src_workload"] = None if src is None else src.as_dict()
            doc["dst_workload"] = None if dst is None else dst.as_dict()
    return json.dumps(doc, separators=(",", ":"))


async def _cmd_consume(args: argparse.Namespace, cfg: Config) -> int:
    flt = filter_from_args(args)
    if args.follow and not args.from_:
        args.from_ = "now"
    # Workload names are shown with --workloads, and with --namespace/--pod (loaded anyway).
    show = bool(args.workloads or args.namespace or args.pod)
    reader, flt, wl = await _reader(args, cfg, flt, follow=args.follow, want_workloads=show)
    fmt = _json if args.json else _line
    shown = wl if show else None
    out = sys.stdout
    async with reader:
        async for chunk in reader.packets(match=None if flt.empty else flt.match, chunk=512):
            out.write("\n".join(fmt(p, shown) for p in chunk) + "\n")
            if args.follow:
                out.flush()
        await reader.check_nodes()
    out.flush()
    _report(reader, "nothing printed")
    return 0


# -- snapshots -----------------------------------------------------------------------------
async def _cmd_snap_create(args: argparse.Namespace, cfg: Config) -> int:
    if not args.from_ or not args.to:
        raise ConfigError("snapshot create needs --from and --to")
    from rawcap.snapshots import SnapshotStore

    from ._snapshot import create_snapshot

    lo, hi = parse_window(args.from_, args.to)
    store = SnapshotStore(cfg.get("snapshots.url"))
    flt = filter_from_args(args)
    wl: Workloads | None = None
    if flt.needs_workloads:  # kept with the snapshot, so that its exports resolve the same way
        wl = await _workloads(cfg, record=True)
        flt = flt.bind(wl)
    _sigterm_interrupts()
    manifest = await create_snapshot(
        cfg,
        store,
        lo=lo,
        hi=hi,
        name=args.name,
        nodes=_nodes(args),
        flt=flt,
        source=args.source,
        workloads=wl,
    )
    for note in manifest["recycled"]:
        _notice(f"warning: {note}")
    packets = sum(n["packets"] for n in manifest["nodes"].values())
    if args.json:
        print(json.dumps(manifest))
    else:
        print(manifest["id"])
    _notice(
        f"snapshot {manifest['id']}: {packets} packets from {len(manifest['nodes'])} node(s), "
        f"{len(manifest['objects'])} object(s) in {store.url}"
    )
    return 0


async def _cmd_snap_list(args: argparse.Namespace, cfg: Config) -> int:
    from rawcap.snapshots import SnapshotStore, list_snapshots

    store = SnapshotStore(cfg.get("snapshots.url"))
    for m in await list_snapshots(store):
        if args.json:
            print(json.dumps(m))
        elif "error" in m:
            print(f"{m['id']}  (damaged: {m['error']})")
        else:
            packets = sum(n["packets"] for n in m["nodes"].values())
            print(
                f"{m['id']}  {m['window']['from']} .. {m['window']['to']}  nodes={len(m['nodes'])} "
                f"packets={packets}  created {m['created_at']} by {m['created_by']}"
            )
    return 0


async def _cmd_snap_show(args: argparse.Namespace, cfg: Config) -> int:
    from rawcap.snapshots import SnapshotStore, load_manifest

    manifest = await load_manifest(SnapshotStore(cfg.get("snapshots.url")), args.id)
    print(json.dumps(manifest, indent=None if args.json else 2, sort_keys=True))
    return 0


async def _cmd_snap_export(args: argparse.Namespace, cfg: Config) -> int:
    args.source = f"snapshot:{args.id}"
    return await _cmd_export(args, cfg)


async def _cmd_snap_verify(args: argparse.Namespace, cfg: Config) -> int:
    from rawcap.snapshots import SnapshotStore, verify_snapshot

    store = SnapshotStore(cfg.get("snapshots.url"))
    problems = await verify_snapshot(store, args.id)
    if problems:
        for p in problems:
            print(f"{args.id}: {p}")
        raise RawcapError(
            f"snapshot {args.id} failed verification: {len(problems)} problem(s): " + "; ".join(problems[:3])
        )
    print(f"{args.id}: ok")
    return 0


async def _cmd_snap_delete(args: argparse.Namespace, cfg: Config) -> int:
    if not args.force:
        raise ConfigError(
            f"snapshots are immutable: 'rawcap snapshot delete {args.id} --force' deletes it for good"
        )
    from rawcap.snapshots import SnapshotStore, delete_snapshot

    n = await delete_snapshot(SnapshotStore(cfg.get("snapshots.url")), args.id)
    _notice(f"deleted snapshot {args.id} ({n} objects)")
    return 0


# -- registration --------------------------------------------------------------------------
def _window_args(p: argparse.ArgumentParser, *, source: bool = True) -> None:
    p.add_argument("--from", dest="from_", metavar="T", help="window start, inclusive (ISO-8601, -15m, now)")
    p.add_argument("--to", metavar="T", help="window end, exclusive (default now)")
    p.add_argument(
        "--node", action="append", metavar="NAME", help="node(s); repeat or comma-separate (default all)"
    )
    if source:
        p.add_argument(
            "--source",
            default="kafka",
            metavar="SRC",
            help="kafka (default), local (node FIFO buffer), archive, snapshot:ID",
        )


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="output file, or - for stdout")
    p.add_argument("--format", choices=("pcapng", "pcap"), default="pcapng", help="default pcapng")
    p.add_argument("--comment-node", action="store_true", help="per-packet comment naming the node")
    p.add_argument(
        "--comment-workload",
        action="store_true",
        help="per-packet comment naming the node and both ends' workloads at the packet's time (rawcap.k8s)",
    )


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    c = sub.add_parser(
        "consume",
        parents=[parent],
        help="print packets of a window, one line each",
        description="One line per packet (time, node, 5-tuple, length, TCP flags), or --json.\n"
        "Sequence gaps and corrupt batches are reported on stderr.",
        formatter_class=fmt,
    )
    _window_args(c)
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--follow", action="store_true", help="keep tailing new packets (Kafka)")
    c.add_argument(
        "--workloads",
        action="store_true",
        help="show both ends' workloads (rawcap.k8s; implied by --namespace/--pod)",
    )
    add_filter_arguments(c)
    c.set_defaults(func=_cmd_consume)

    pcap = sub.add_parser("pcap", parents=[parent], help="export/import pcap and pcapng files")
    psub = pcap.add_subparsers(dest="pcap_command", metavar="ACTION", required=True)
    e = psub.add_parser(
        "export",
        parents=[parent],
        help="a window as pcapng (or pcap)",
        description="Packets of a window, all nodes merged in time order, as pcapng with one\n"
        "interface per node:iface and nanosecond timestamps. An empty window\n"
        "writes a valid empty file, says so on stderr and exits 0.",
        formatter_class=fmt,
    )
    _window_args(e)
    _export_args(e)
    add_filter_arguments(e)
    # prepare: the Kafka lookups start before the event loop is imported; fast_exit: on
    # success the process ends without interpreter teardown; plain_asyncio: asyncio.run, not
    # anyio.run (rawcap.cli).
    e.set_defaults(func=_cmd_export, prepare=_prepare_export, fast_exit=True, plain_asyncio=True)
    i = psub.add_parser(
        "import",
        parents=[parent],
        help="a pcap/pcapng file into rawcap.packets",
        description="Packets keep their original timestamps (also the Kafka timestamps).",
    )
    i.add_argument("file", metavar="FILE")
    i.add_argument("--node", help="node name (default: the file name without extension)")
    i.add_argument("--iface", default="imported", help="interface name for classic pcap input")
    i.set_defaults(func=_cmd_import)

    snap = sub.add_parser(
        "snapshot",
        parents=[parent],
        help="immutable copies of a window",
        description="Snapshots live in snapshots.url (default ./.rawcap/snapshots; s3://...).",
    )
    ssub = snap.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    sc = ssub.add_parser("create", parents=[parent], help="copy a window into the snapshot store")
    _window_args(sc)
    sc.add_argument("--name", help="snapshot name = id (default snap-<time>-<random>)")
    sc.add_argument("--json", action="store_true", help="print the manifest")
    add_filter_arguments(sc)
    sc.set_defaults(func=_cmd_snap_create)
    sl = ssub.add_parser("list", parents=[parent], help="list snapshots")
    sl.add_argument("--json", action="store_true")
    sl.set_defaults(func=_cmd_snap_list)
    ss = ssub.add_parser("show", parents=[parent], help="print a snapshot's manifest")
    ss.add_argument("id")
    ss.add_argument("--json", action="store_true", help="one line")
    ss.set_defaults(func=_cmd_snap_show)
    se = ssub.add_parser("export", parents=[parent], help="a snapshot as pcapng (or pcap)")
    se.add_argument("id")
    _window_args(se, source=False)
    _export_args(se)
    add_filter_arguments(se)
    se.set_defaults(func=_cmd_snap_export, fast_exit=True, plain_asyncio=True)
    sv = ssub.add_parser("verify", parents=[parent], help="check every object against the manifest")
    sv.add_argument("id")
    sv.set_defaults(func=_cmd_snap_verify)
    sd = ssub.add_parser("delete", parents=[parent], help="delete a snapshot (needs --force)")
    sd.add_argument("id")
    sd.add_argument("--force", action="store_true")
    sd.set_defaults(func=_cmd_snap_delete)
