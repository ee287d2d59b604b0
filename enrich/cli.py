"""``rawcap k8s-watch``, ``rawcap enrich`` and ``rawcap flows``."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from rawcap.config import Config, parse_duration
from rawcap.kafka import start_consumer, stop_client
from rawcap.kafka import topic_partitions as partitions
from rawcap.timeparse import format_ns, parse_window
from rawcap.workloads import WorkloadFilter, Workloads, workload_label
from schemas import topics
from schemas.errors import ConfigError
from schemas.flows import FlowRecord, UnsupportedFlow, decode_flow

from ._consumer import Election, run_enrich, run_k8s_watch
from ._filters import FilterPlanner, Selection

__all__ = ("FlowFilter", "add_commands", "format_flow")


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    w = sub.add_parser(
        "k8s-watch", parents=[parent], help="Kubernetes layer producer (rawcap.k8s, capture filters)",
        description="List and watch pods, services, EndpointSlices, namespaces and nodes; publish "
                    "compact records to rawcap.k8s and per-node capture filters (tap.regex, "
                    "tap.namespaces, tap.excludedNamespaces) to rawcap.control.")
    w.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: k8s.kubeconfig, "
                   "in-cluster, then ~/.kube/config)")
    w.add_argument("--no-filters", action="store_true", help="do not publish capture filters")
    w.add_argument("--leader-elect", action="store_true",
                   help="run several replicas: only the holder of a coordination.k8s.io Lease "
                        "watches and publishes, the others take over when it goes")
    w.add_argument("--lease-name", default="rawcap-k8s-watch", metavar="NAME",
                   help="the Lease (default rawcap-k8s-watch)")
    w.add_argument("--lease-namespace", metavar="NS",
                   help="its namespace (default $POD_NAMESPACE, the in-cluster namespace, default)")
    w.add_argument("--lease-duration", default="15s", metavar="DURATION",
                   help="a leader that has not renewed for this long is replaced (default 15s)")
    w.set_defaults(func=_k8s_watch, service=True)

    e = sub.add_parser(
        "enrich", parents=[parent], help="enrichment consumer (rawcap.packets -> rawcap.flows)",
        description="Consumer group rawcap-enrich: join rawcap.packets, rawcap.k8s and rawcap.procs "
                    "into one rawcap.flows record per flow and enrich.flowInterval.")
    e.set_defaults(func=_enrich, service=True)

    f = sub.add_parser(
        "flows", parents=[parent], help="list enriched flows from rawcap.flows",
        description="One line (or JSON object with --json) per flow record in the window.")
    f.add_argument("--from", dest="start", metavar="T", help="window start (default: everything)")
    f.add_argument("--to", dest="end", metavar="T", help="window end (default: now)")
    f.add_argument("--node", action="append", default=[], help="only flows seen on this node")
    f.add_argument("--host", action="append", default=[], help="src or dst IP (or CIDR)")
    f.add_argument("--port", action="append", type=_port, default=[], help="src or dst port")
    f.add_argument("--proto", action="append", choices=("tcp", "udp"), default=[])
    f.add_argument("--namespace", action="append", default=[], help="src or dst namespace")
    f.add_argument("--pod", metavar="REGEX", help="src or dst pod name matching REGEX")
    f.add_argument("--json", action="store_true", help="one JSON object per line")
    f.set_defaults(func=_flows)


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port {text!r} is not a number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"--port {n} is out of range 0-65535")
    return n


async def _k8s_watch(args: argparse.Namespace, cfg: Config) -> int:
    planner = None
    if not args.no_filters:
        planner = FilterPlanner(Selection(cfg.get("tap.regex"), tuple(cfg.get("tap.namespaces")),
                                          tuple(cfg.get("tap.excludedNamespaces"))))
    election = None
    if args.leader_elect:
        try:
            duration = parse_duration(args.lease_duration)
        except ValueError as exc:
            raise ConfigError(f"--lease-duration {args.lease_duration!r}: {exc}") from None
        election = Election(args.lease_name, args.lease_namespace or _own_namespace(),
                            os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
                            duration)
    return await run_k8s_watch(cfg, kubeconfig=args.kubeconfig or "", planner=planner,
                               election=election)


def _own_namespace() -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


async def _enrich(args: argparse.Namespace, cfg: Config) -> int:
    from rawcap.gctune import tune_gc

    tune_gc()
    return await run_enrich(cfg)


class FlowFilter:
    """The FILTER flags of ``rawcap flows``; alternatives within a flag, AND across flags."""

    def __init__(self, *, nodes: list[str] = (), hosts: list[str] = (), ports: list[int] = (),  # type: ignore[assignment]
                 protos: list[str] = (), namespaces: list[str] = (), pod: str | None = None) -> None:  # type: ignore[assignment]
        self.nodes = set(nodes)
        try:
            self.nets = [ipaddress.ip_network(h, strict=False) for h in hosts]
        except ValueError as exc:
            raise ConfigError(f"--host: {exc}") from None
        self.ports = set(ports)
        self.protos = set(protos)
        # the same matching as forensics and calls (rawcap.workloads): --namespace matches a
        # pod or service of that namespace, --pod a pod name, both on the same end
        self.workloads = WorkloadFilter(Workloads(), namespaces=namespaces, pods=[pod] if pod else [])

    def match(self, r: FlowRecord) -> bool:
        if self.nodes and r.node not in self.nodes:
            return False
        if self.protos and r.proto not in self.protos:
            return False
        if self.ports and r.sport not in self.ports and r.dport not in self.ports:
            return False
        if self.nets:
            addrs = [ipaddress.ip_address(r.src), ipaddress.ip_address(r.dst)]
            if not any(a in n for n in self.nets for a in addrs):
                return False
        return self.workloads.match_ends(r.src_workload, r.dst_workload)


def _side(ip: str, port: int, wl: Any, proc: Any) -> str:
    addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    parts = [addr]
    if wl is not None:
        parts.append(workload_label(wl))
    if proc is not None:
        parts.append(f"pid={proc.pid} comm={proc.comm}" + (f" ctr={proc.container_id[:12]}"
                                                            if proc.container_id else ""))
    return " ".join(parts)


def format_flow(r: FlowRecord) -> str:
    flags = f" [{r.tcp_flags}]" if r.proto == "tcp" and r.tcp_flags else ""
    return (f"{format_ns(r.first_ns)} {r.node} {r.proto} "
            f"{_side(r.src, r.sport, r.src_workload, r.src_process)} -> "
            f"{_side(r.dst, r.dport, r.dst_workload, r.dst_process)} "
            f"pkts {r.packets_fwd}/{r.packets_rev} bytes {r.bytes_fwd}/{r.bytes_rev}{flags} "
            f"dur {(r.last_ns - r.first_ns) / 1e9:.3f}s")


async def _flows(args: argparse.Namespace, cfg: Config) -> int:
    lo, hi = parse_window(args.start, args.end)
    flt = FlowFilter(nodes=args.node, hosts=args.host, ports=args.port, protos=args.proto,
                     namespaces=args.namespace, pod=args.pod)
    margin_ms = 60_000 + int(cfg.get("enrich.flowInterval") * 1000)
    consumer = await start_consumer(cfg)
    out = sys.stdout
    try:
        tps = await partitions(consumer, topics.FLOWS)
        if not tps:
            return 0
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: max(0, lo // 1_000_000 - margin_ms) for tp in tps})
        live = []
        for tp in tps:
            st = starts.get(tp)
            if st is None:
                continue
            consumer.seek(tp, st.offset)
            if st.offset < ends[tp]:
                live.append(tp)
        while live:
            got = await consumer.getmany(*live, timeout_ms=1000, max_records=1000)
            for tp, recs in got.items():
                for m in recs:
                    if m.offset >= ends[tp]:
                        break
                    try:
                        r = decode_flow(m.value)
                    except UnsupportedFlow as exc:
                        print(f"rawcap: warning: skipping flow at {tp.partition}/{m.offset}: {exc}",
                              file=sys.stderr)
                        continue
                    if r.last_ns < lo or r.first_ns > hi or not flt.match(r):
                        continue
                    out.write((json.dumps(r.as_dict()) if args.json else format_flow(r)) + "\n")
            live = [tp for tp in live if await consumer.position(tp) < ends[tp]
                    and not _past(got.get(tp), hi, margin_ms)]
        out.flush()
    finally:
        await stop_client(consumer)
    return 0


def _past(recs: Any, hi_ns: int, margin_ms: int) -> bool:
    return bool(recs) and recs[-1].timestamp > hi_ns // 1_000_000 + margin_ms
