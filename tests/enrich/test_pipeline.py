"""k8s-watch -> rawcap.k8s / rawcap.control, enrich -> rawcap.flows, flows CLI; real Kafka and
the real kube-apiserver (workloads made as in tests/enrich/realkube.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from enrich import FilterPlanner, Selection, run_enrich, run_k8s_watch
from rawcap.config import Config
from rawcap.kafka import ensure_topics, producer_kwargs, read_topic_to_end
from rawcap.stack import KubeCluster
from schemas import Packet, encode_batch, topics
from schemas.control import CaptureFilter, decode_control
from schemas.flows import FlowRecord
from schemas.procs import ProcRecord

from .control import clear_capture_filters
from .frames import handshake
from .realkube import Kube

pytestmark = pytest.mark.integration
S = 1_000_000_000


@contextlib.contextmanager
def real_cluster(kube: KubeCluster) -> Iterator[tuple[Kube, dict[str, str]]]:
    """Namespaces shop-<id> and billing-<id>, a node, Service shop/api and its StatefulSet pod
    api-0 at 10.231.7.20. Yields the helper and the names (shop, billing, node)."""
    k = Kube(kube)
    sfx = uuid.uuid4().hex[:6]
    names = {"shop": f"shop-{sfx}", "billing": f"billing-{sfx}", "node": f"enr-node-{sfx}"}
    k.namespace(names["shop"])
    k.namespace(names["billing"])
    k.node(names["node"], "192.0.2.77")
    k.service(names["shop"], "api", 80)
    k.statefulset(names["shop"], "api")
    k.run_pod(names["shop"], k.wait_pod(names["shop"], "api"), names["node"], "10.231.7.20")
    try:
        yield k, names
    finally:
        k.kubectl("delete", "namespace", names["shop"], names["billing"], "--wait=false", check=False)
        k.kubectl("delete", "node", names["node"], "--wait=false", check=False)


async def _control_filters(cfg: Config) -> dict[str, CaptureFilter]:
    out: dict[str, CaptureFilter] = {}

    def apply(r: Any) -> None:
        if r.key and r.key.startswith(b"filter/") and r.value:
            out[r.key.decode()] = decode_control(r.value)  # type: ignore[assignment]

    await read_topic_to_end(cfg, topics.CONTROL, apply)
    return out


def _everything(f: CaptureFilter) -> bool:
    return not (f.allow_ips or f.deny_ips or f.allow_ports or f.deny_ports or f.protocols)


async def _wait(pred: Callable[[], Any], wait_s: float, what: str) -> Any:
    with anyio.fail_after(wait_s, reason=f"timed out waiting for {what}"):
        while not (got := pred()):  # noqa: ASYNC110 (polling outside state)
            await anyio.sleep(0.1)
    return got


async def _send_packets(cfg: Config, node_name: str, seq: int, frames: list[bytes], t0: int) -> None:
    pkts = [Packet(t0 + i * 1000, len(f), len(f), 2, 0, memoryview(f)) for i, f in enumerate(frames)]
    producer = AIOKafkaProducer(**producer_kwargs(cfg))
    await producer.start()
    try:
        await producer.send_and_wait(topics.PACKETS, encode_batch(node=node_name, seq=seq, packets=pkts,
                                                                  ifaces={2: "veth0"}),
                                     key=node_name.encode(), timestamp_ms=t0 // 1_000_000)
    finally:
        await producer.stop()


@pytest.mark.timeout(600)  # a real control plane + Kafka on 2 shared cores
async def test_pod_ip_reuse_attributed_end_to_end(make_config: Callable[..., Config], kube: KubeCluster,
                                                  tmp_path: Path) -> None:
    cfg = make_config({"enrich.flowInterval": "1s", "enrich.grace": "500ms", "node.name": "enr-node-a"})
    await ensure_topics(cfg)
    node_name = f"enr-node-{time.time_ns() % 10**6}"
    flows: list[FlowRecord] = []

    async def collect(records: list[FlowRecord]) -> None:
        flows.extend(r for r in records if r.node == node_name)

    # a process report for the client socket (the capture agent's rawcap.procs)
    producer = AIOKafkaProducer(**producer_kwargs(cfg))
    await producer.start()
    await producer.send_and_wait(topics.PROCS, ProcRecord(
        ts_ns=time.time_ns(), node="enr-node-a", kind="tcp", pid=4242, tid=4242, comm="curl",
        cgroup_id=99, container_id="c0ffee", proto=6, saddr="10.231.7.10", sport=40001,
        daddr="10.231.7.20", dport=80).encode(), key=b"enr-node-a")
    await producer.stop()

    with real_cluster(kube) as (k, names):
        shop, billing, kc = names["shop"], names["billing"], str(kube.kubeconfig)
        k.deployment(shop, "web")
        web = k.wait_pod(shop, "web")
        k.run_pod(shop, web, node_name, "10.231.7.10")
        stop_watch, stop_enrich = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_k8s_watch(cfg, kubeconfig=kc, stop=stop_watch))
            tg.start_soon(lambda: run_enrich(cfg, stop=stop_enrich, on_flows=collect))
            await anyio.sleep(3)
            t_before = time.time_ns()
            await _send_packets(cfg, node_name, 1,
                                handshake("10.231.7.10", 40001, "10.231.7.20", 80), t_before)
            await _wait(lambda: [f for f in flows if f.sport == 40001], 30, "flow before reuse")
            await anyio.to_thread.run_sync(lambda: k.scale(shop, "deployment", "web", 0))
            await anyio.to_thread.run_sync(lambda: k.delete_pod(shop, web))
            await anyio.sleep(1)
            await anyio.to_thread.run_sync(lambda: k.job(billing, "batch"))
            batch = await anyio.to_thread.run_sync(lambda: k.wait_pod(billing, "batch"))
            await anyio.to_thread.run_sync(lambda: k.run_pod(billing, batch, node_name, "10.231.7.10"))
            await anyio.sleep(2)
            t_after = time.time_ns()
            await _send_packets(cfg, node_name, 2,
                                handshake("10.231.7.10", 40002, "10.231.7.20", 80), t_after)
            await _wait(lambda: [f for f in flows if f.sport == 40002], 30, "flow after reuse")
            stop_watch.set()
            stop_enrich.set()

    before = next(f for f in flows if f.sport == 40001)
    after = next(f for f in flows if f.sport == 40002)
    assert before.src_workload is not None and after.src_workload is not None
    assert (before.src_workload.namespace, before.src_workload.name) == (shop, web)
    assert (before.src_workload.owner_kind, before.src_workload.owner_name) == ("Deployment", "web")
    assert (after.src_workload.namespace, after.src_workload.name) == (billing, batch)
    assert (after.src_workload.owner_kind, after.src_workload.owner_name) == ("Job", "batch")
    assert before.dst_workload is not None and before.dst_workload.name == "api-0"
    assert (before.packets_fwd, before.packets_rev) == (4, 3)
    assert before.src_process is not None and before.src_process.pid == 4242
    assert before.src_process.comm == "curl"

    # the CLI reads them back, with the namespace filter
    env_cfg = tmp_path / "values.yaml"
    env_cfg.write_text(f"kafka:\n  bootstrap: {cfg.get('kafka.bootstrap')}\n")
    out = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "rawcap.cli", "--config", str(env_cfg), "flows", "--from", "-5m",
         "--node", node_name, "--namespace", billing, "--json"],
        capture_output=True, text=True, timeout=60))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(d["sport"], d["src_workload"]["name"]) for d in lines] == [(40002, batch)]
    text = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "rawcap.cli", "--config", str(env_cfg), "flows", "--from", "-5m",
         "--node", node_name], capture_output=True, text=True, timeout=60))
    assert f"pod/{shop}/{web}" in text.stdout and "pid=4242 comm=curl" in text.stdout


@pytest.mark.timeout(600)  # a real control plane + Kafka on 2 shared cores
async def test_values_change_republishes_capture_filters(make_config: Callable[..., Config],
                                                         kube: KubeCluster) -> None:
    cfg = make_config()
    await ensure_topics(cfg)
    with real_cluster(kube) as (k, names):
        billing, node, kc = names["billing"], names["node"], str(kube.kubeconfig)
        k.deployment(billing, "ledger")
        k.run_pod(billing, k.wait_pod(billing, "ledger"), node, "10.231.8.5")

        def second_ledger_pod() -> None:
            k.deployment(billing, "ledger1")
            k.run_pod(billing, k.wait_pod(billing, "ledger1"), node, "10.231.8.6")

        async def watch_with(sel: Selection, check: Callable[[dict[str, CaptureFilter]], bool],
                             then: Callable[[], Any] | None = None,
                             then_check: Callable[[dict[str, CaptureFilter]], bool] | None = None) -> None:
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run_k8s_watch(cfg, kubeconfig=kc, planner=FilterPlanner(sel),
                                                    stop=stop, settle_s=0.1))
                await _wait(lambda: check(await_filters()), 30, "filters")
                if then is not None and then_check is not None:
                    await anyio.to_thread.run_sync(then)
                    await _wait(lambda: then_check(await_filters()), 30, "updated filters")
                stop.set()

        current: dict[str, CaptureFilter] = {}

        def await_filters() -> dict[str, CaptureFilter]:
            return current

        async def poll() -> None:
            while True:
                fresh = await _control_filters(cfg)
                current.clear()
                current.update(fresh)
                await anyio.sleep(0.3)

        async with anyio.create_task_group() as outer:
            outer.start_soon(poll)
            # values: everything captured
            await watch_with(Selection(), lambda f: "filter/*" in f and _everything(f["filter/*"]))
            v0 = current["filter/*"].version
            # values change: billing excluded -> the node's filter denies the billing pod IPs,
            # and a billing pod started later is denied within seconds
            await watch_with(
                Selection(excluded=(billing,)),
                lambda f: "10.231.8.5/32" in getattr(f.get(f"filter/{node}"), "deny_ips", ()),
                then=second_ledger_pod,
                then_check=lambda f: "10.231.8.6/32" in getattr(f.get(f"filter/{node}"), "deny_ips", ()),
            )
            assert current[f"filter/{node}"].version > v0
            assert "10.231.7.20/32" not in current[f"filter/{node}"].deny_ips  # shop still captured
            outer.cancel_scope.cancel()
    await clear_capture_filters(cfg, node)
