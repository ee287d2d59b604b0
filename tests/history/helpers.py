"""History test data: calls and flows with known content, produced to Kafka or written
straight into the archive layout, and a plain-Python reference of what trends must say."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.calls import Call, call_rows, encode_calls
from schemas.flows import FlowRecord, encode_flow
from schemas.k8s import Workload

HOUR_NS = 3_600_000_000_000
MS = 1_000_000


@dataclass(frozen=True)
class Server:
    namespace: str
    service: str
    ip: str
    port: int
    ops: tuple[tuple[str, str], ...]  # (method, path); none: Redis


SERVERS = (
    Server("shop", "payments", "10.1.0.10", 8080, (("POST", "/pay/{}"), ("POST", "/refund"))),
    Server("shop", "cart", "10.1.0.11", 8080, (("GET", "/cart/{}"), ("POST", "/cart"))),
    Server("infra", "redis", "10.1.0.12", 6379, ()),
)
CLIENTS = (("shop", "web-5d8f7c9b4-x2x9q", "10.2.0.5"), ("shop", "web-5d8f7c9b4-k7k1m", "10.2.0.6"),
           ("batch", "jobs-7f6c5d4b3-aaaaa", "10.2.0.7"))


def make_call(rng: random.Random, ts_ns: int, node: str, server: Server, client: tuple[str, str, str], *,
              fail: bool = False, latency_ms: float = 20.0, op: int | None = None) -> Call:
    ns, pod, ip = client
    lat = int(latency_ms * MS * rng.uniform(0.5, 1.5))
    common: dict[str, Any] = dict(node=node, src_ip=ip, src_port=40000 + rng.randrange(20000),
                  dst_ip=server.ip,
                  dst_port=server.port, req_ts_ns=ts_ns, resp_ts_ns=ts_ns + lat, latency_ns=lat,
                  src_workload=pod, src_namespace=ns, dst_workload=f"service/{server.service}",
                  dst_namespace=server.namespace, req_bytes=rng.randrange(100, 900),
                  resp_bytes=rng.randrange(100, 5000))
    if not server.ops:
        return Call("redis", command=rng.choice(("GET", "SET")), key=f"k{rng.randrange(99)}",
                    error="ERR failure" if fail else "", **common)
    method, path = server.ops[rng.randrange(len(server.ops)) if op is None else op]
    return Call("http1", method=method, path=path.format(rng.randrange(1, 10**6)), host=server.service,
                status=503 if fail else 200, **common)


def make_flow(ts_ns: int, node: str, server: Server, client: tuple[str, str, str], sport: int,
              nbytes: int) -> FlowRecord:
    ns, pod, ip = client
    return FlowRecord(
        node=node, proto="tcp", src=ip, sport=sport, dst=server.ip, dport=server.port,
        first_ns=ts_ns, last_ns=ts_ns + 5 * MS, interval_ns=ts_ns - ts_ns % (10 * 1_000_000_000),
        packets_fwd=6, bytes_fwd=nbytes // 3, packets_rev=5, bytes_rev=nbytes - nbytes // 3,
        flags_fwd=0x1B, flags_rev=0x1B,
        src_workload=Workload("pod", pod, ns, node, "web", "Deployment", pod.rsplit("-", 2)[0]),
        dst_workload=Workload("service", server.service, server.namespace),
    )


def steady(start_ns: int, hours: int, *, per_hour: int = 40, seed: int = 1,
           nodes: tuple[str, ...] = ("node-a", "node-b")) -> Iterator[tuple[Call, FlowRecord]]:
    """Calls (and one flow per call) with a daily shape but no anomaly: per server and hour,
    ``per_hour`` calls x (0.8..1.2 day-shape), 1% failures, latency ~20 ms."""
    rng = random.Random(seed)
    for h in range(hours):
        hour_ns = start_ns + h * HOUR_NS
        shape = 1.0 + 0.2 * ((h % 24) in range(8, 20))
        for server in SERVERS:
            n = int(per_hour * shape)
            for i in range(n):
                ts = hour_ns + int((i + rng.random()) * HOUR_NS / n)
                client = CLIENTS[i % len(CLIENTS)]
                c = make_call(rng, ts, nodes[i % len(nodes)], server, client, fail=(i % 100 == 7))
                yield c, make_flow(ts, c.node, server, client, c.src_port, c.req_bytes + c.resp_bytes)


async def produce_values(bootstrap: str, topic: str, items: Iterable[tuple[str, bytes, int]]) -> int:
    """Send ``(key, value, timestamp_ns)`` in order; returns how many."""
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20)
    await prod.start()
    n = 0
    try:
        futs = [await prod.send(topic, value, key=key.encode(), timestamp_ms=ts // MS)
                for key, value, ts in items]
        for f in futs:
            await f
            n += 1
    finally:
        await prod.stop()
    return n


def call_records(calls: Iterable[Call], per_record: int = 50) -> Iterator[tuple[str, bytes, int]]:
    """``(key, value, timestamp_ns)`` of ``rawcap.calls`` records as the dissector writes them
    (version 2: calls of one node and UTC hour, in their order, up to ``per_record`` each)."""
    groups: dict[tuple[str, int], list[Call]] = defaultdict(list)
    for c in calls:
        groups[c.node, c.ts_ns // HOUR_NS].append(c)
    for group in groups.values():
        for i in range(0, len(group), per_record):
            part = group[i:i + per_record]
            yield part[0].node, encode_calls(call_rows(part)), part[-1].ts_ns


async def produce_calls_flows(bootstrap: str, pairs: list[tuple[Call, FlowRecord]]) -> None:
    await produce_values(bootstrap, topics.CALLS, call_records(c for c, _f in pairs))
    await produce_values(bootstrap, topics.FLOWS,
                         ((f.node, encode_flow(f), f.first_ns) for _c, f in pairs))


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), computed by hand."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _service(c: Call) -> str:
    return c.dst_workload.removeprefix("service/")


def _flow_service(f: FlowRecord) -> str:
    return f.dst_workload.name if f.dst_workload else ""


def reference_trends(calls: Iterable[Call], flows: Iterable[FlowRecord], lo_ns: int, hi_ns: int,
                     every_ns: int, call_group: Callable[[Call], str] = _service,
                     flow_group: Callable[[FlowRecord], str] = _flow_service,
                     ) -> dict[tuple[int, str], dict[str, Any]]:
    """(bucket start ns, group) -> metrics, in plain Python over the records themselves
    (group: the serving service unless told)."""
    acc: dict[tuple[int, str], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "errors": 0, "lat": [], "bytes": 0, "flows": set()})
    for c in calls:
        if not lo_ns <= c.ts_ns < hi_ns:
            continue
        a = acc[(c.ts_ns // every_ns * every_ns, call_group(c))]
        a["requests"] += 1
        a["errors"] += int(c.status >= 500 or bool(c.error))
        a["lat"].append(c.latency_ns / MS)
    for f in flows:
        ts = max(f.interval_ns, f.first_ns)
        if not lo_ns <= ts < hi_ns:
            continue
        a = acc[(ts // every_ns * every_ns, flow_group(f))]
        a["bytes"] += f.bytes_fwd + f.bytes_rev
        a["flows"].add((f.src, f.sport, f.dst, f.dport, f.proto))
    out = {}
    for key, a in acc.items():
        lat = a["lat"]
        out[key] = {
            "requests": a["requests"], "errors": a["errors"],
            "error_rate": a["errors"] / a["requests"] if a["requests"] else None,
            "p50": quantile(lat, 0.5) if lat else None, "p99": quantile(lat, 0.99) if lat else None,
            "bytes": a["bytes"], "flows": len(a["flows"]),
        }
    return out


