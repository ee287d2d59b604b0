"""The watcher against the session's real kube-apiserver: the initial list, pods created and
deleted, status-only changes, an IP reused by a pod of another namespace, and the in-cluster
service-account path (token + CA) over TLS. Objects are made the way a cluster makes them
(tests/enrich/realkube.py)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import anyio
import pytest

from enrich._model import Change
from enrich._watch import Watcher, api_client
from rawcap.stack import KubeCluster
from schemas.k8s import PodRecord, pack_ip

from .realkube import Kube
from .watchharness import drain_into, run_watcher

pytestmark = pytest.mark.integration


@pytest.fixture
def shop(kube: KubeCluster) -> tuple[Kube, str, str]:
    """Namespace shop-<id> with a Deployment web (pod Running at 10.231.1.10 on node-a-<id>)
    and a Service web whose EndpointSlice the controller filled in."""
    k = Kube(kube)
    sfx = uuid.uuid4().hex[:6]
    ns, node = f"shop-{sfx}", f"node-a-{sfx}"
    k.namespace(ns)
    k.node(node, "192.0.2.1")
    k.deployment(ns, "web")
    k.run_pod(ns, k.wait_pod(ns, "web"), node, "10.231.1.10")
    k.service(ns, "web", 8080)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        slices = k.get("endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web")["items"]
        if any(e.get("addresses") == ["10.231.1.10"] for s in slices for e in s.get("endpoints") or ()):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the EndpointSlice controller did not list the pod")
    return k, ns, node


async def test_initial_list_builds_records(shop: tuple[Kube, str, str]) -> None:
    k, ns, node = shop
    pod_name = k.pods(ns, "web")[0]["metadata"]["name"]
    cluster_ip = k.get("service", "web", "-n", ns)["spec"]["clusterIP"]
    async with run_watcher(k.kc, read_timeout=90) as watching:
        keys = {key for key, _alive in watching.keys()}
        assert {f"namespace/{ns}", f"node/{node}", f"pod/{ns}/{pod_name}", f"service/{ns}/web"} <= keys
        assert any(key.startswith(f"endpointslice/{ns}/web-") for key in keys)
        rec = next(c.record for c in watching.changes if c.key == f"pod/{ns}/{pod_name}")
        assert isinstance(rec, PodRecord)
        # ReplicaSet web-<hash> + label pod-template-hash, as the Deployment controller made them
        assert (rec.owner_kind, rec.owner_name) == ("Deployment", "web")
        assert rec.ips == ("10.231.1.10",) and rec.node == node
        wl = watching.index.resolve(pack_ip("10.231.1.10"), time.time_ns())
        assert wl is not None
        assert (wl.name, wl.namespace, wl.service) == (pod_name, ns, "web")
        svc = watching.index.resolve(pack_ip(cluster_ip), time.time_ns())
        assert svc is not None and (svc.kind, svc.name) == ("service", "web")
        node_wl = watching.index.resolve(pack_ip("192.0.2.1"), time.time_ns())
        assert node_wl is not None and node_wl.kind == "node"


async def test_pod_created_deleted_and_status_only_change(shop: tuple[Kube, str, str]) -> None:
    k, ns, node = shop

    async def sh(*args: str) -> None:
        await anyio.to_thread.run_sync(lambda: k.kubectl(*args))

    async with run_watcher(k.kc, read_timeout=90) as watching:
        await anyio.to_thread.run_sync(lambda: k.statefulset(ns, "db"))
        await anyio.to_thread.run_sync(lambda: k.run_pod(ns, k.wait_pod(ns, "db"), node, "10.231.1.11"))
        ch = await watching.wait_for(lambda c: c.key == f"pod/{ns}/db-0" and c.record is not None
                                     and c.record.ips == ("10.231.1.11",))
        assert ch.record is not None and ch.record.owner_kind == "StatefulSet"  # type: ignore[union-attr]
        # status-only change (Ready -> False): nothing to publish for the pod
        before = len(watching.changes)
        await sh("patch", "pod", "db-0", "-n", ns, "--subresource=status", "--type=json", "-p",
                 '[{"op": "replace", "path": "/status/conditions/3/status", "value": "False"}]')
        await sh("label", "pod", "db-0", "-n", ns, "marker=1")  # a change that does count
        await watching.wait_for(lambda c: c.key == f"pod/{ns}/db-0" and c.record is not None
                                and dict(c.record.labels).get("marker") == "1")
        pod_changes = [c.key for c in watching.changes[before:] if c.key.startswith("pod/")]
        assert pod_changes == [f"pod/{ns}/db-0"], pod_changes
        t_alive = time.time_ns()
        await sh("scale", "-n", ns, "statefulset/db", "--replicas=0")
        await anyio.to_thread.run_sync(lambda: k.delete_pod(ns, "db-0"))
        gone = await watching.wait_for(lambda c: c.key == f"pod/{ns}/db-0" and c.record is None)
        assert gone.ts_ns >= t_alive
        ip = pack_ip("10.231.1.11")
        assert watching.index.resolve(ip, t_alive).name == "db-0"  # type: ignore[union-attr]
        assert watching.index.resolve(ip, time.time_ns()) is None


async def test_ip_reused_by_a_pod_of_another_namespace(shop: tuple[Kube, str, str]) -> None:
    k, ns, node = shop
    billing = f"billing-{ns[-6:]}"
    k.namespace(billing)
    ip = pack_ip("10.231.1.12")
    async with run_watcher(k.kc, read_timeout=90) as watching:
        await anyio.to_thread.run_sync(lambda: k.deployment(ns, "old"))
        old = await anyio.to_thread.run_sync(lambda: k.wait_pod(ns, "old"))
        await anyio.to_thread.run_sync(lambda: k.run_pod(ns, old, node, "10.231.1.12"))
        await watching.wait_for(lambda c: c.key == f"pod/{ns}/{old}" and c.record is not None
                                and c.record.ips == ("10.231.1.12",))
        t_old = time.time_ns()
        await anyio.to_thread.run_sync(lambda: k.scale(ns, "deployment", "old", 0))
        await watching.wait_for(lambda c: c.key == f"pod/{ns}/{old}" and c.record is None)
        await anyio.to_thread.run_sync(lambda: k.deployment(billing, "new"))
        new = await anyio.to_thread.run_sync(lambda: k.wait_pod(billing, "new"))
        await anyio.to_thread.run_sync(lambda: k.run_pod(billing, new, node, "10.231.1.12"))
        await watching.wait_for(lambda c: c.key == f"pod/{billing}/{new}" and c.record is not None
                                and c.record.ips == ("10.231.1.12",))
        t_new = time.time_ns()
        assert watching.index.resolve(ip, t_old).name == old  # type: ignore[union-attr]
        assert watching.index.resolve(ip, t_new).name == new  # type: ignore[union-attr]


async def test_in_cluster_service_account_over_tls(
    shop: tuple[Kube, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No kubeconfig, KUBERNETES_SERVICE_HOST set: kubernetes_asyncio's in-cluster loader
    with a real bound ServiceAccount token (the chart's watcher account) and the cluster CA."""
    k, ns, _node = shop
    k.install_rbac(ns)
    token = tmp_path / "token"
    token.write_text(k.kubectl("create", "token", "rc-rawcap-k8s-watch", "-n", ns).stdout.strip())
    import kubernetes_asyncio.config.incluster_config as incluster

    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME", str(k.cluster.ca_file))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(k.cluster.api_port))
    api = await api_client("")
    try:
        assert api.configuration.host == f"https://127.0.0.1:{k.cluster.api_port}"
        assert api.configuration.verify_ssl
        watcher = Watcher(api, kinds=("pod",), watch_timeout=30, read_timeout=90)
        changes: list[Change] = []
        send, recv = anyio.create_memory_object_stream[Change](100)


        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            tg.start_soon(drain_into, recv, changes)
            with anyio.fail_after(20):
                await watcher.wait_synced()
                await anyio.to_thread.run_sync(lambda: k.deployment(ns, "late"))
                while not any(c.key.startswith(f"pod/{ns}/late-") for c in changes):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        assert any(c.key.startswith(f"pod/{ns}/web-") for c in changes)
        assert watcher.stats.errors == {}
    finally:
        await api.close()
