"""``rawcap capture``: the node agent's command line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rawcap.config import Config

__all__ = ("add_commands",)

DESCRIPTION = """\
Capture TCP/UDP packets on this node into the node FIFO buffer and ship them to
rawcap.packets. An eBPF socket filter keeps only TCP/UDP (and applies the capture filter
from rawcap.control at run time); whole TPACKET_V3 ring blocks become zstd batches
(plain ones with --codec none). Without a Kafka bootstrap (or with --no-kafka) it only
fills the buffer, which
`rawcap pcap export --source local` reads. Stops on SIGTERM/SIGINT or after --duration,
flushing what it holds, and prints one summary line.
"""


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("capture", parents=[parent], help="run the node capture agent",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", metavar="IF",
                   help="interface, comma-separated list/globs (veth*,eth0), or any (capture.iface)")
    p.add_argument("--node", metavar="NAME", help="node name (node.name; default $NODE_NAME or hostname)")
    p.add_argument("--duration", metavar="SECONDS", type=float,
                   help="stop after this many seconds (default: run until SIGTERM)")
    p.add_argument("--buffer-dir", metavar="DIR", help="node FIFO buffer directory (capture.bufferDir)")
    p.add_argument("--storage-size", metavar="SIZE",
                   help="node FIFO budget, e.g. 1Gi (tap.capture.raw.storageSize)")
    p.add_argument("--no-kafka", action="store_true", help="only fill the local buffer (capture.kafka=false)")
    p.add_argument("--metrics-port", metavar="PORT", type=int, help="serve /metrics here (metrics.port)")
    p.add_argument("--snaplen", metavar="BYTES", type=int,
                   help="bytes kept per packet, 0 = all (capture.snaplen)")
    p.add_argument("--ring-block-size", metavar="SIZE", help="capture.ring.blockSize, e.g. 1Mi")
    p.add_argument("--ring-block-count", metavar="N", type=int, help="capture.ring.blockCount")
    p.add_argument("--codec", metavar="CODEC",
                   help="batch body codec: zstd (default) or none (capture.codec)")
    p.add_argument("--zstd-level", metavar="N", type=int, help="capture.zstdLevel")
    p.add_argument("--netns", metavar="NAME",
                   help="capture inside this network namespace (ip netns name or path); "
                        "Kafka and /metrics stay in the agent's own")
    p.add_argument("--procs", action=argparse.BooleanOptionalAction, default=None,
                   help="publish process context to rawcap.procs (default: on when Kafka is used)")
    p.set_defaults(func=run_capture, service=True)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {
        "capture.iface": args.iface,
        "node.name": args.node,
        "capture.bufferDir": args.buffer_dir,
        "tap.capture.raw.storageSize": args.storage_size,
        "metrics.port": args.metrics_port,
        "capture.snaplen": args.snaplen,
        "capture.ring.blockSize": args.ring_block_size,
        "capture.ring.blockCount": args.ring_block_count,
        "capture.zstdLevel": args.zstd_level,
        "capture.codec": args.codec,
    }
    if args.no_kafka:
        o["capture.kafka"] = False
    return {k: v for k, v in o.items() if v is not None}


async def run_capture(args: argparse.Namespace, cfg: Config) -> int:
    from schemas.errors import RawcapError

    from .agent import Agent

    cfg = cfg.with_overrides(_overrides(args))
    if not cfg.get("tap.capture.raw.enabled"):
        print("rawcap: raw capture is disabled (tap.capture.raw.enabled=false); nothing to do",
              file=sys.stderr)
        return 0
    if args.duration is not None and args.duration <= 0:
        raise RawcapError(f"--duration must be a positive number of seconds, not {args.duration}")
    if cfg.get("capture.kafka") and cfg.get("kafka.securityProtocol") != "PLAINTEXT":
        # A wrong password or an untrusted CA is a configuration error, not an outage that
        # the FIFO should ride out: one line, exit 2 (an unreachable broker passes here).
        import anyio

        from rawcap.kafka import probe

        refused = await anyio.to_thread.run_sync(probe, cfg)
        if refused:
            raise RawcapError(refused)
    agent = Agent(cfg, procs=args.procs, netns=args.netns)
    summary = await agent.run(args.duration)
    print(summary.line(), file=sys.stderr, flush=True)
    return 0
