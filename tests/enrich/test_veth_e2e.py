"""Real traffic over a veth pair, captured by the real agent, enriched, and filtered by values.

capture agent (namespace b) -> rawcap.packets -> rawcap enrich -> rawcap.flows, with the pods
of the session's real kube-apiserver holding the veth addresses (tests/enrich/realkube.py:
Deployments and StatefulSets make the pods, the test binds them and writes their status) and
k8s-watch authenticating with a ServiceAccount token bound to the chart's ClusterRole, not as
admin. The client pod is replaced by its Deployment and the new pod gets the same IP; then the
IP goes to a pod of another namespace; finally excluding that namespace in the values makes the
running capture drop its traffic.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from enrich import FilterPlanner, Selection, run_enrich, run_k8s_watch
from rawcap.config import Config
from rawcap.kafka import ensure_topics
from rawcap.stack import KubeCluster
from schemas.flows import FlowRecord
from tests.capture.helpers import PY, RAWCAP, TRAFFIC, Proc
from tests.netns import VethPair

from .control import clear_capture_filters
from .realkube import Kube

pytestmark = pytest.mark.integration
PORT = 7131


async def _wait(pred: Callable[[], Any], wait_s: float, what: str) -> Any:
    with anyio.fail_after(wait_s, reason=f"timed out waiting for {what}"):
        while not (got := pred()):  # noqa: ASYNC110 (polling outside state)
            await anyio.sleep(0.1)
    return got


CLIENT_PIDS: list[int] = []


def _traffic(net: VethPair, rounds: int) -> None:
    c = Proc([PY, TRAFFIC, "client", net.a.ip, str(PORT), "--sizes", "300", "--rounds", str(rounds),
              "--no-udp", "--interval", "0.05"], ns=net.b)
    CLIENT_PIDS.append(c.p.pid)  # `ip netns exec` execs: the pid is the client's
    assert c.p.wait(60) == 0, c.text
    c.stop()


@pytest.mark.timeout(600)  # a real control plane + Kafka on 2 shared cores
async def test_veth_flows_ip_reuse_and_namespace_exclusion(
    make_config: Callable[..., Config], kube: KubeCluster, tmp_path: Path
) -> None:
    node_name = f"enr-veth-{uuid.uuid4().hex[:6]}"
    sfx = node_name[-6:]
    shop, frontend, billing, system = (f"{n}-{sfx}" for n in ("shop", "frontend", "billing", "rawcap"))
    cfg = make_config({"enrich.flowInterval": "1s", "enrich.grace": "500ms"})
    await ensure_topics(cfg)
    flows: list[FlowRecord] = []
    k = Kube(kube)

    async def sh(fn: Callable[..., Any], *args: Any) -> Any:  # kubectl off the event loop
        return await anyio.to_thread.run_sync(lambda: fn(*args))

    async def collect(records: list[FlowRecord]) -> None:
        flows.extend(r for r in records if r.node == node_name and PORT in (r.sport, r.dport))

    with VethPair("rcenr") as net:
        for ns in (shop, frontend, billing, system):
            k.namespace(ns)
        k.install_rbac(system)  # the chart's ServiceAccounts and ClusterRole
        kc = k.token_kubeconfig(system, "rc-rawcap-k8s-watch", tmp_path / "kubeconfig")
        k.node(node_name, "192.0.2.200")
        k.statefulset(shop, "server")
        k.deployment(frontend, "client")
        k.run_pod(shop, k.wait_pod(shop, "server"), node_name, net.a.ip)
        client_1 = k.wait_pod(frontend, "client")
        k.run_pod(frontend, client_1, node_name, net.b.ip)
        srv = Proc([PY, TRAFFIC, "server", str(PORT)], ns=net.a)
        env = {"RAWCAP_BOOTSTRAP": cfg.get("kafka.bootstrap"), "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.3s"}
        cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface, "--node", node_name,
                    "--buffer-dir", str(tmp_path / "buf"), "--procs"], env=env)
        try:
            srv.wait_for("serving", stdout=True)
            await anyio.to_thread.run_sync(lambda: cap.wait_for("capture running", 60))
            await anyio.to_thread.run_sync(lambda: cap.wait_for("shipper connected", 60))
            stop_enrich = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run_enrich(cfg, stop=stop_enrich, on_flows=collect))
                stop_watch = anyio.Event()
                tg.start_soon(lambda: run_k8s_watch(cfg, kubeconfig=str(kc), stop=stop_watch,
                                                    planner=FilterPlanner(Selection()), settle_s=0.1))
                await anyio.sleep(3)

                # 1. before the reuse: the client pod of namespace frontend
                t1 = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                before = await _wait(lambda: [f for f in flows if f.first_ns >= t1], 40, "flows before reuse")

                # 1b. the Deployment replaces the pod; the new pod gets the same IP
                await sh(k.delete_pod, frontend, client_1)
                client_2 = await sh(lambda: k.wait_pod(frontend, "client", exclude={client_1}))
                await sh(k.run_pod, frontend, client_2, node_name, net.b.ip)
                await anyio.sleep(1.5)
                t1b = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                replaced = await _wait(lambda: [f for f in flows if f.first_ns >= t1b], 40,
                                       "flows after the pod was replaced")

                # 2. the client IP goes to another pod in another namespace
                await sh(k.scale, frontend, "deployment", "client", 0)
                await sh(k.delete_pod, frontend, client_2)
                await anyio.sleep(1)
                await sh(k.deployment, billing, "invoicer")
                invoicer_1 = await sh(k.wait_pod, billing, "invoicer")
                await sh(k.run_pod, billing, invoicer_1, node_name, net.b.ip)
                await anyio.sleep(1.5)
                t2 = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                after = await _wait(lambda: [f for f in flows if f.first_ns >= t2], 40, "flows after reuse")

                # 3. values change: billing excluded -> the running capture drops its traffic
                stop_watch.set()
                await anyio.sleep(1)
                applied = sum("filter applied" in line for line in cap.lines)
                stop_watch2 = anyio.Event()
                tg.start_soon(lambda: run_k8s_watch(
                    cfg, kubeconfig=str(kc), stop=stop_watch2, settle_s=0.1,
                    planner=FilterPlanner(Selection(excluded=(billing,)))))
                await _wait(lambda: sum("filter applied" in line for line in cap.lines) > applied, 40,
                            "the capture agent to apply the new filter")
                t3 = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                await anyio.sleep(4)  # > interval + grace + batch delay: flows would be out
                excluded = [f for f in flows if f.first_ns >= t3]
                stop_watch2.set()

                # 4. and back: the exclusion removed from the values, the traffic is seen again
                await anyio.sleep(1)
                applied = sum("filter applied" in line for line in cap.lines)
                stop_watch3 = anyio.Event()
                tg.start_soon(lambda: run_k8s_watch(cfg, kubeconfig=str(kc), stop=stop_watch3, settle_s=0.1,
                                                    planner=FilterPlanner(Selection())))
                await _wait(lambda: sum("filter applied" in line for line in cap.lines) > applied, 40,
                            "the capture agent to apply the widened filter")
                t4 = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                again = await _wait(lambda: [f for f in flows if f.first_ns >= t4], 40,
                                    "flows after re-inclusion")
                stop_watch3.set()

                # 5. values narrow (tap.namespaces: [billing]): only billing pods' IPs are
                # captured; deleting the pod stops its capture, its replacement is captured again
                await anyio.sleep(1)
                applied = sum("filter applied" in line for line in cap.lines)
                stop_watch4 = anyio.Event()
                tg.start_soon(lambda: run_k8s_watch(
                    cfg, kubeconfig=str(kc), stop=stop_watch4, settle_s=0.1,
                    planner=FilterPlanner(Selection(namespaces=(billing,)))))
                await _wait(lambda: sum("filter applied" in line for line in cap.lines) > applied, 40,
                            "the capture agent to apply the allow filter")
                t5 = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                allowed = await _wait(lambda: [f for f in flows if f.first_ns >= t5], 40,
                                      "flows of the selected namespace")
                applied = sum("filter applied" in line for line in cap.lines)
                await sh(k.delete_pod, billing, invoicer_1)
                await _wait(lambda: sum("filter applied" in line for line in cap.lines) > applied, 40,
                            "the capture agent to drop the deleted pod")
                t6 = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                await anyio.sleep(4)
                deleted = [f for f in flows if f.first_ns >= t6]
                applied = sum("filter applied" in line for line in cap.lines)
                invoicer_2 = await sh(lambda: k.wait_pod(billing, "invoicer", exclude={invoicer_1}))
                t_new = time.time_ns()
                await sh(k.run_pod, billing, invoicer_2, node_name, net.b.ip)
                await _wait(lambda: sum("filter applied" in line for line in cap.lines) > applied, 40,
                            "the capture agent to add the new pod")
                new_pod_s = (time.time_ns() - t_new) / 1e9
                await anyio.sleep(1.5)
                t7 = time.time_ns()
                await anyio.to_thread.run_sync(_traffic, net, 3)
                readded = await _wait(lambda: [f for f in flows if f.first_ns >= t7], 40,
                                      "flows of the new pod")
                stop_watch4.set()
                stop_enrich.set()
        finally:
            cap.stop()
            srv.stop()
            await clear_capture_filters(cfg, node_name)
            k.kubectl("delete", "namespace", shop, frontend, billing, system, "--wait=false", check=False)
            k.kubectl("delete", "node", node_name, "--wait=false", check=False)

    for f in before:
        assert f.src == net.b.ip and f.dst == net.a.ip and f.dport == PORT
        assert f.src_workload is not None and f.dst_workload is not None
        assert (f.src_workload.namespace, f.src_workload.name) == (frontend, client_1)
        assert (f.src_workload.owner_kind, f.src_workload.owner_name) == ("Deployment", "client")
        assert (f.dst_workload.namespace, f.dst_workload.name) == (shop, "server-0")
        assert (f.dst_workload.owner_kind, f.dst_workload.owner_name) == ("StatefulSet", "server")
        assert f.packets_fwd >= 3 and f.packets_rev >= 2 and "SYN" in f.tcp_flags
        # process context from the agent's eBPF tracepoints: the traffic client in namespace b
        assert f.src_process is not None and f.src_process.comm.startswith("python"), f
        assert f.src_process.pid in CLIENT_PIDS, (f.src_process, CLIENT_PIDS)
    assert client_2 != client_1
    for f in replaced:
        assert f.src_workload is not None
        assert (f.src_workload.namespace, f.src_workload.name) == (frontend, client_2)
        assert (f.src_workload.owner_kind, f.src_workload.owner_name) == ("Deployment", "client")
    for f in after:
        assert f.src_workload is not None
        assert (f.src_workload.namespace, f.src_workload.name) == (billing, invoicer_1)
    assert len(before) >= 1 and len(replaced) >= 1 and len(after) >= 1
    assert excluded == [], "traffic of an excluded namespace was still captured"
    assert again and again[0].src_workload is not None and again[0].src_workload.name == invoicer_1
    assert allowed and allowed[0].src_workload is not None and allowed[0].src_workload.name == invoicer_1
    assert deleted == [], "traffic of a deleted pod was still captured under an allow filter"
    assert new_pod_s < 5, f"the new pod's IP reached the running capture after {new_pod_s:.1f}s"
    assert readded and readded[0].src_workload is not None
    assert readded[0].src_workload.name == invoicer_2 != invoicer_1
