"""The user's command for ``bench/enrich``: ``rawcap enrich`` (consumer group
``rawcap-enrich``) as a whole process, fed through Kafka.

:func:`run` puts the engine part's packets on ``rawcap.packets`` as the capture agent ships
them (TPACKET_V3 block batches, keyed by node, Kafka timestamp = first packet), the same pods,
services and EndpointSlices on ``rawcap.k8s`` (as ``k8s-watch`` publishes them: key
``record.key``) and the same process reports on ``rawcap.procs``, commits the current end of
``rawcap.packets`` for the group first (so the process reads only these batches), then starts
``rawcap enrich`` and times it from process start until the group has committed the end
offsets of ``rawcap.packets`` (one admin client polled every 50 ms), with the CPU seconds of
its process tree at that moment (psutil). It then counts the flow records the run wrote to
``rawcap.flows`` for the run's node.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import psutil

from rawcap.config import Config, load_config
from schemas import decode_header, topics
from schemas.flows import decode_flow
from schemas.k8s import encode_k8s

__all__ = ("E2E", "run")

RAWCAP = os.path.join(os.path.dirname(sys.executable), "rawcap")
GROUP = "rawcap-enrich"


@dataclass
class E2E:
    """One ``rawcap enrich`` run: wall and CPU seconds to the committed end, the part after
    its "context loaded" log line, and what it wrote to ``rawcap.flows`` for the node."""

    wall: float
    cpu: float
    after_context: float
    flows: int = 0
    packets: int = 0
    attributed: int = 0
    stderr: list[str] = field(default_factory=list)


async def _produce(cfg: Config, node: str, blocks: list[bytes], k8s: list[Any], procs: list[Any],
                   ctx_ms: int) -> None:
    from aiokafka import AIOKafkaProducer

    from rawcap.kafka import producer_kwargs

    p = AIOKafkaProducer(**producer_kwargs(cfg, linger_ms=20))
    await p.start()
    try:
        futs = [await p.send(topics.K8S, encode_k8s(r), key=r.key.encode(), timestamp_ms=ctx_ms)
                for r in k8s]
        futs += [await p.send(topics.PROCS, r.encode(), key=r.node.encode(), timestamp_ms=ctx_ms)
                 for r in procs]
        for v in blocks:
            t0_ms = decode_header(v)[0].first_ns // 1_000_000
            futs.append(await p.send(topics.PACKETS, v, key=node.encode(), timestamp_ms=t0_ms))
        for f in futs:
            await f
    finally:
        await p.stop()


async def _ends(cfg: Config, topic: str, group: str | None = None) -> dict[int, int]:
    """End offsets of ``topic``; with ``group``, also commit them for that group."""
    from aiokafka import AIOKafkaConsumer

    from rawcap.kafka import consumer_kwargs, stop_client, topic_partitions

    c = AIOKafkaConsumer(**consumer_kwargs(cfg, group))
    await c.start()
    try:
        tps = await topic_partitions(c, topic)
        end = await c.end_offsets(tps)
        if group:
            c.assign(tps)
            await c.commit({tp: end[tp] for tp in tps})
        return {tp.partition: end[tp] for tp in tps}
    finally:
        await stop_client(c)


async def _wait_committed(cfg: Config, end: dict[int, int], proc: subprocess.Popen[bytes],
                          cpu: psutil.Process) -> tuple[float, float] | None:
    """(time, CPU seconds of the process tree) when ``GROUP`` has committed ``end`` on every
    partition of ``rawcap.packets``; None if the process exits first."""
    from aiokafka.admin import AIOKafkaAdminClient

    from rawcap.kafka import admin_kwargs

    admin = AIOKafkaAdminClient(**admin_kwargs(cfg))
    await admin.start()
    try:
        while proc.poll() is None:
            offs = await admin.list_consumer_group_offsets(GROUP)
            got = {tp.partition: m.offset for tp, m in offs.items() if tp.topic == topics.PACKETS}
            if all(got.get(p, -1) >= e for p, e in end.items()):
                return time.perf_counter(), _tree_cpu(cpu)
            await anyio.sleep(0.05)
        return None
    finally:
        await admin.close()


def _tree_cpu(p: psutil.Process) -> float:
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        try:
            t = q.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def _count_flows(cfg: Config, start: dict[int, int], node: str) -> tuple[int, int, int]:
    """(records, packets, records with both ends attributed) on ``rawcap.flows`` for ``node``
    from ``start`` to the current end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from rawcap.kafka import consumer_kwargs, stop_client

    c = AIOKafkaConsumer(**consumer_kwargs(cfg))
    await c.start()
    n = pkts = both = 0
    try:
        tps = [TopicPartition(topics.FLOWS, p) for p in sorted(start)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        live = []
        for tp in tps:
            if start[tp.partition] < ends[tp]:
                c.seek(tp, start[tp.partition])
                live.append(tp)
        while live:
            got = await c.getmany(*live, timeout_ms=1000, max_records=5000)
            for recs in got.values():
                for m in recs:
                    r = decode_flow(m.value)
                    if r.node == node:
                        n += 1
                        pkts += r.packets_fwd + r.packets_rev
                        both += r.src_workload is not None and r.dst_workload is not None
            live = [tp for tp in live if await c.position(tp) < ends[tp]]
    finally:
        await stop_client(c)
    return n, pkts, both


def run(bootstrap: str, node: str, blocks: list[bytes], k8s: list[Any], procs: list[Any],
        ctx_ns: int, flow_interval: str) -> E2E:
    """Publish the context and packets, then time ``rawcap enrich`` as described above, with
    ``enrich.flowInterval`` set to ``flow_interval`` through its environment variable."""
    env = dict(os.environ, RAWCAP_BOOTSTRAP=bootstrap, RAWCAP_ENRICH_FLOW_INTERVAL=flow_interval)
    cfg = load_config(env=env)
    # a fresh stack's group coordinator answers after a retry or two; aiokafka retries, quietly
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    anyio.run(_ends, cfg, topics.PACKETS, GROUP)  # the group starts at the current end
    flows_start = anyio.run(_ends, cfg, topics.FLOWS)
    t = time.perf_counter()
    anyio.run(_produce, cfg, node, blocks, k8s, procs, ctx_ns // 1_000_000)
    print(f"produced {len(k8s):,} rawcap.k8s records, {len(procs):,} rawcap.procs reports and "
          f"{len(blocks)} rawcap.packets batches ({sum(map(len, blocks)) / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    end = anyio.run(_ends, cfg, topics.PACKETS)

    lines: list[tuple[float, str]] = []
    t = time.perf_counter()
    proc = subprocess.Popen([RAWCAP, "enrich"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.perf_counter(), line.decode(errors="replace").rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        done = anyio.run(_wait_committed, cfg, end, proc, ps)
    finally:
        proc.terminate()
        proc.wait(60)
        reader.join(10)
    if done is None:
        raise SystemExit(f"rawcap enrich exited {proc.returncode}:\n"
                         + "\n".join(x for _, x in lines[-20:]))
    t_done, cpu = done
    loaded = [ts for ts, x in lines if "context loaded" in x]
    out = E2E(t_done - t, cpu, t_done - loaded[0] if loaded else float("nan"),
              stderr=[x for _, x in lines])
    out.flows, out.packets, out.attributed = anyio.run(_count_flows, cfg, flows_start, node)
    return out
