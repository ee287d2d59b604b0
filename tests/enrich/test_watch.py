"""The watcher against the fake API server: list, watch, resume, bookmarks, 410 Gone."""

from __future__ import annotations

import contextlib
import itertools
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from enrich._model import Change
from enrich._watch import Watcher, api_client
from schemas.errors import ConfigError
from schemas.k8s import PodRecord, WorkloadIndex, pack_ip

from .fakekube import FakeKube, endpointslice, namespace, node, pod, service


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Harness:
    """A running watcher whose changes land in a list and a WorkloadIndex."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.changes: list[Change] = []
        self.index = WorkloadIndex()

    async def wait_for(self, pred: Any, wait_s: float = 10.0) -> Change:
        with anyio.fail_after(wait_s):
            while True:
                for ch in self.changes:
                    if pred(ch):
                        return ch
                await anyio.sleep(0.02)

    def keys(self) -> list[tuple[str, bool]]:
        return [(c.key, c.record is not None) for c in self.changes]


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fk = FakeKube()
    await fk.start()
    fk.put("namespace", namespace("shop"))
    fk.put("namespace", namespace("kube-system"))
    fk.put("node", node("node-a", "192.0.2.1"))
    fk.put("pod", pod("shop", "web-7d9f8c6b5-x2x4z", "10.231.1.10", "node-a",
                      owner=("ReplicaSet", "web-7d9f8c6b5"), pod_template_hash="7d9f8c6b5"))
    fk.put("service", service("shop", "web", "10.96.0.20"))
    fk.put("endpointslice", endpointslice("shop", "web", [("web-7d9f8c6b5-x2x4z", "10.231.1.10")]))
    yield fk
    await fk.stop()


@contextlib.asynccontextmanager
async def run_watcher(fk: FakeKube, tmp_path: Path) -> AsyncIterator[Harness]:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(fk.kubeconfig())
    api = await api_client(str(cfg))
    watcher = Watcher(api, watch_timeout=30, read_timeout=10)
    h = Harness(watcher)
    send, recv = anyio.create_memory_object_stream[Change](100)

    async def drain() -> None:
        async with recv:
            async for ch in recv:
                h.changes.append(ch)
                h.index.apply(ch.key, ch.record, ch.ts_ns)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            tg.start_soon(drain)
            with anyio.fail_after(10):
                await watcher.wait_synced()
            yield h
            tg.cancel_scope.cancel()
    finally:
        await api.close()


async def test_initial_list_builds_records(kube: FakeKube, tmp_path: Path) -> None:
    async with run_watcher(kube, tmp_path) as watching:
        keys = {k for k, _alive in watching.keys()}
        assert {"namespace/shop", "node/node-a", "pod/shop/web-7d9f8c6b5-x2x4z", "service/shop/web",
                "endpointslice/shop/web-abcde"} <= keys
        rec = next(c.record for c in watching.changes if c.key == "pod/shop/web-7d9f8c6b5-x2x4z")
        assert isinstance(rec, PodRecord)
        assert (rec.owner_kind, rec.owner_name) == ("Deployment", "web")
        assert rec.ips == ("10.231.1.10",) and rec.node == "node-a"
        wl = watching.index.resolve(pack_ip("10.231.1.10"), time.time_ns())
        assert wl is not None
        assert (wl.name, wl.namespace, wl.service) == ("web-7d9f8c6b5-x2x4z", "shop", "web")
        svc = watching.index.resolve(pack_ip("10.96.0.20"), time.time_ns())
        assert svc is not None and (svc.kind, svc.name) == ("service", "web")
        assert watching.index.resolve(pack_ip("192.0.2.1"), time.time_ns()).kind == "node"  # type: ignore[union-attr]


async def test_pod_created_and_deleted(kube: FakeKube, tmp_path: Path) -> None:
    async with run_watcher(kube, tmp_path) as watching:
        kube.put("pod", pod("shop", "db-0", "10.231.1.11", "node-a", owner=("StatefulSet", "db")))
        ch = await watching.wait_for(lambda c: c.key == "pod/shop/db-0")
        assert ch.record is not None and ch.record.owner_kind == "StatefulSet"  # type: ignore[union-attr]
        t_alive = time.time_ns()
        kube.delete("pod", "shop", "db-0")
        gone = await watching.wait_for(lambda c: c.key == "pod/shop/db-0" and c.record is None)
        assert gone.ts_ns >= t_alive
        ip = pack_ip("10.231.1.11")
        assert watching.index.resolve(ip, t_alive).name == "db-0"  # type: ignore[union-attr]
        assert watching.index.resolve(ip, time.time_ns()) is None


async def test_status_only_change_publishes_nothing(kube: FakeKube, tmp_path: Path) -> None:
    async with run_watcher(kube, tmp_path) as watching:
        before = len(watching.changes)
        obj = kube.objects["pod"]["shop/web-7d9f8c6b5-x2x4z"]
        obj["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        kube.put("pod", obj)
        kube.put("pod", pod("shop", "marker", None, "node-a"))
        await watching.wait_for(lambda c: c.key == "pod/shop/marker")
        assert [c.key for c in watching.changes[before:]] == ["pod/shop/marker"]


async def test_ip_reused_by_another_pod(kube: FakeKube, tmp_path: Path) -> None:
    async with run_watcher(kube, tmp_path) as watching:
        ip = pack_ip("10.231.1.12")
        t0 = time.time_ns() - 5_000_000_000
        kube.put("pod", pod("shop", "old-pod", "10.231.1.12", "node-a", start=rfc3339(t0)))
        await watching.wait_for(lambda c: c.key == "pod/shop/old-pod")
        t_old = time.time_ns()
        kube.delete("pod", "shop", "old-pod")
        await watching.wait_for(lambda c: c.key == "pod/shop/old-pod" and c.record is None)
        # the new pod's startTime (second resolution) may predate the old pod's deletion
        kube.put("pod", pod("billing", "new-pod", "10.231.1.12", "node-a", start=rfc3339(t0)))
        await watching.wait_for(lambda c: c.key == "pod/billing/new-pod")
        t_new = time.time_ns()
        assert watching.index.resolve(ip, t_old).name == "old-pod"  # type: ignore[union-attr]
        assert watching.index.resolve(ip, t_new).name == "new-pod"  # type: ignore[union-attr]
        assert watching.index.resolve(ip, t0 - 1_000_000_001) is None


async def test_dropped_watch_resumes_without_relist(kube: FakeKube, tmp_path: Path) -> None:
    async with run_watcher(kube, tmp_path) as watching:
        with anyio.fail_after(5):  # the watch is open once a bookmark came through it
            while not watching.watcher.stats.bookmarks.get("pod"):  # noqa: ASYNC110 (polling outside state)
                await anyio.sleep(0.02)
        lists_before = dict(watching.watcher.stats.lists)
        rv_before = int(kube.rv)
        kube.drop_watches()
        for i in range(5):
            kube.put("pod", pod("shop", f"burst-{i}", f"10.231.2.{i}", "node-a"))
        kube.delete("pod", "shop", "burst-0")
        await watching.wait_for(lambda c: c.key == "pod/shop/burst-0" and c.record is None)
        await watching.wait_for(lambda c: c.key == "pod/shop/burst-4")
        assert watching.watcher.stats.lists == lists_before  # resumed, not re-listed
        resumed = [r for r in kube.requests if r["kind"] == "pod" and r.get("watch") == "True"]
        assert len(resumed) >= 2
        assert int(resumed[-1]["resourceVersion"]) >= rv_before
        assert resumed[-1]["allowWatchBookmarks"] == "True"
        # every event exactly once, in order
        burst = [k for k, alive in watching.keys() if k.startswith("pod/shop/burst-")]
        assert burst == [f"pod/shop/burst-{i}" for i in range(5)] + ["pod/shop/burst-0"]


@pytest.mark.parametrize("mode", ["event", "http"])
async def test_410_gone_relists_and_diffs(kube: FakeKube, tmp_path: Path, mode: str) -> None:
    kube.gone_mode = mode
    async with run_watcher(kube, tmp_path) as h:
        kube.drop_watches()
        kube.delete("pod", "shop", "web-7d9f8c6b5-x2x4z")
        kube.put("pod", pod("shop", "after-gone", "10.231.3.1", "node-a"))
        kube.compact()  # history gone: the resume must get 410 and re-list
        await h.wait_for(lambda c: c.key == "pod/shop/after-gone")
        await h.wait_for(lambda c: c.key == "pod/shop/web-7d9f8c6b5-x2x4z" and c.record is None)
        assert h.watcher.stats.gone.get("pod") == 1
        assert h.watcher.stats.lists["pod"] == 2
        assert h.index.resolve(pack_ip("10.231.1.10"), time.time_ns()) is None


async def test_error_event_410_on_open_watch(kube: FakeKube, tmp_path: Path) -> None:
    async with run_watcher(kube, tmp_path) as watching:
        with anyio.fail_after(5):  # the watch is open once a bookmark came through it
            while not watching.watcher.stats.bookmarks.get("pod"):  # noqa: ASYNC110 (polling outside state)
                await anyio.sleep(0.02)
        kube.expire_watches()
        kube.put("pod", pod("shop", "after-expire", "10.231.3.2", "node-a"))
        await watching.wait_for(lambda c: c.key == "pod/shop/after-expire")
        with anyio.fail_after(5):
            while watching.watcher.stats.gone.get("pod", 0) < 1:  # noqa: ASYNC110 (polling outside state)
                await anyio.sleep(0.05)
        assert watching.watcher.stats.lists["pod"] >= 2


async def test_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"k8s\.kubeconfig"):
        await api_client(str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    bad.write_text("clusters: [")
    with pytest.raises(ConfigError, match=r"k8s\.kubeconfig"):
        await api_client(str(bad))


async def test_api_errors_back_off_then_recover(kube: FakeKube, tmp_path: Path) -> None:
    """HTTP 500 on the list and then on the watch: retried with growing, jittered delays,
    and the watch resumes from the resourceVersion it had (no re-list for a watch error)."""
    kube.fail_next("pod", 3)  # the first list and its two retries fail
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(kube.kubeconfig())
    api = await api_client(str(cfg))
    watcher = Watcher(api, kinds=("pod",), watch_timeout=30, read_timeout=10)
    changes: list[Change] = []
    send, recv = anyio.create_memory_object_stream[Change](100)

    async def drain() -> None:
        async with recv:
            async for ch in recv:
                changes.append(ch)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            tg.start_soon(drain)
            with anyio.fail_after(20):
                await watcher.wait_synced()
            assert watcher.stats.errors == {"pod": 3} and watcher.stats.lists == {"pod": 1}
            at = [float(r["at"]) for r in kube.requests if r["kind"] == "pod"]
            gaps = [b - a for a, b in itertools.pairwise(at[:4])]
            # 0.5 s, 1 s, 2 s, each jittered by 0.5x..1.5x: never immediate, and growing
            assert all(g >= 0.2 for g in gaps) and gaps[2] > gaps[0], gaps
            # now the watch fails once: the retry resumes from the same resourceVersion
            with anyio.fail_after(5):
                while not watcher.stats.bookmarks.get("pod"):  # noqa: ASYNC110 (polling outside state)
                    await anyio.sleep(0.02)
            kube.fail_next("pod", 1)
            kube.drop_watches()
            kube.put("pod", pod("shop", "after-500", "10.231.4.1", "node-a"))
            with anyio.fail_after(10):
                while not any(c.key == "pod/shop/after-500" for c in changes):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert watcher.stats.errors == {"pod": 4} and watcher.stats.lists == {"pod": 1}
            tg.cancel_scope.cancel()
    finally:
        await api.close()


async def test_in_cluster_service_account_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No kubeconfig, KUBERNETES_SERVICE_HOST set: the pod's service account token and CA
    (kubernetes_asyncio's in-cluster loader) against an HTTPS API server."""
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    await anyio.run_process(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                             "-subj", "/CN=kubernetes", "-addext", "subjectAltName=IP:127.0.0.1",
                             "-keyout", str(key), "-out", str(crt)])
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    fk = FakeKube(tls=tls)
    await fk.start()
    fk.put("pod", pod("kube-system", "coredns-0", "10.231.5.1", "node-a"))
    token = tmp_path / "token"
    token.write_text("test-token")
    import kubernetes_asyncio.config.incluster_config as incluster

    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME", str(crt))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(fk.port))
    api = await api_client("")
    try:
        assert api.configuration.host == f"https://127.0.0.1:{fk.port}"
        assert api.configuration.ssl_ca_cert == str(crt) and api.configuration.verify_ssl
        watcher = Watcher(api, kinds=("pod",), watch_timeout=30, read_timeout=10)
        changes: list[Change] = []
        send, recv = anyio.create_memory_object_stream[Change](100)

        async def drain() -> None:
            async with recv:
                async for ch in recv:
                    changes.append(ch)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            tg.start_soon(drain)
            with anyio.fail_after(10):
                await watcher.wait_synced()
                fk.put("pod", pod("kube-system", "coredns-1", "10.231.5.2", "node-a"))
                while not any(c.key == "pod/kube-system/coredns-1" for c in changes):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        assert [c.key for c in changes] == ["pod/kube-system/coredns-0", "pod/kube-system/coredns-1"]
        assert watcher.stats.errors == {}
    finally:
        await api.close()
        await fk.stop()
