"""The watcher against the fake API server, for what a real one cannot be made to do on
demand: watch connections dropped mid-stream, 410 Gone (as HTTP status and as an ERROR event),
injected 500s. Everything else runs against the real kube-apiserver (test_watch_real.py)."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from enrich._model import Change
from enrich._watch import Watcher, api_client
from schemas.errors import ConfigError
from schemas.k8s import pack_ip

from .fakekube import FakeKube, endpointslice, namespace, node, pod, service
from .watchharness import Harness, drain_into, run_watcher


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
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
async def run_fake(fk: FakeKube, tmp_path: Path) -> AsyncIterator[Harness]:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(fk.kubeconfig())
    async with run_watcher(cfg) as h:
        yield h


async def test_dropped_watch_resumes_without_relist(fake: FakeKube, tmp_path: Path) -> None:
    async with run_fake(fake, tmp_path) as watching:
        with anyio.fail_after(5):  # the watch is open once a bookmark came through it
            while not watching.watcher.stats.bookmarks.get("pod"):  # noqa: ASYNC110 (polling outside state)
                await anyio.sleep(0.02)
        lists_before = dict(watching.watcher.stats.lists)
        rv_before = int(fake.rv)
        fake.drop_watches()
        for i in range(5):
            fake.put("pod", pod("shop", f"burst-{i}", f"10.231.2.{i}", "node-a"))
        fake.delete("pod", "shop", "burst-0")
        await watching.wait_for(lambda c: c.key == "pod/shop/burst-0" and c.record is None)
        await watching.wait_for(lambda c: c.key == "pod/shop/burst-4")
        assert watching.watcher.stats.lists == lists_before  # resumed, not re-listed
        resumed = [r for r in fake.requests if r["kind"] == "pod" and r.get("watch") == "True"]
        assert len(resumed) >= 2
        assert int(resumed[-1]["resourceVersion"]) >= rv_before
        assert resumed[-1]["allowWatchBookmarks"] == "True"
        # every event exactly once, in order
        burst = [k for k, alive in watching.keys() if k.startswith("pod/shop/burst-")]
        assert burst == [f"pod/shop/burst-{i}" for i in range(5)] + ["pod/shop/burst-0"]


@pytest.mark.parametrize("mode", ["event", "http"])
async def test_410_gone_relists_and_diffs(fake: FakeKube, tmp_path: Path, mode: str) -> None:
    fake.gone_mode = mode
    async with run_fake(fake, tmp_path) as h:
        fake.drop_watches()
        fake.delete("pod", "shop", "web-7d9f8c6b5-x2x4z")
        fake.put("pod", pod("shop", "after-gone", "10.231.3.1", "node-a"))
        fake.compact()  # history gone: the resume must get 410 and re-list
        await h.wait_for(lambda c: c.key == "pod/shop/after-gone")
        await h.wait_for(lambda c: c.key == "pod/shop/web-7d9f8c6b5-x2x4z" and c.record is None)
        assert h.watcher.stats.gone.get("pod") == 1
        assert h.watcher.stats.lists["pod"] == 2
        assert h.index.resolve(pack_ip("10.231.1.10"), time.time_ns()) is None


async def test_error_event_410_on_open_watch(fake: FakeKube, tmp_path: Path) -> None:
    async with run_fake(fake, tmp_path) as watching:
        with anyio.fail_after(5):  # the watch is open once a bookmark came through it
            while not watching.watcher.stats.bookmarks.get("pod"):  # noqa: ASYNC110 (polling outside state)
                await anyio.sleep(0.02)
        fake.expire_watches()
        fake.put("pod", pod("shop", "after-expire", "10.231.3.2", "node-a"))
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


async def test_api_errors_back_off_then_recover(fake: FakeKube, tmp_path: Path) -> None:
    """HTTP 500 on the list and then on the watch: retried with growing, jittered delays,
    and the watch resumes from the resourceVersion it had (no re-list for a watch error)."""
    fake.fail_next("pod", 3)  # the first list and its two retries fail
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(fake.kubeconfig())
    api = await api_client(str(cfg))
    watcher = Watcher(api, kinds=("pod",), watch_timeout=30, read_timeout=10)
    changes: list[Change] = []
    send, recv = anyio.create_memory_object_stream[Change](100)


    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            tg.start_soon(drain_into, recv, changes)
            with anyio.fail_after(20):
                await watcher.wait_synced()
            assert watcher.stats.errors == {"pod": 3} and watcher.stats.lists == {"pod": 1}
            at = [float(r["at"]) for r in fake.requests if r["kind"] == "pod"]
            gaps = [b - a for a, b in itertools.pairwise(at[:4])]
            # 0.5 s, 1 s, 2 s, each jittered by 0.5x..1.5x: never immediate, and growing
            assert all(g >= 0.2 for g in gaps) and gaps[2] > gaps[0], gaps
            # now the watch fails once: the retry resumes from the same resourceVersion
            with anyio.fail_after(5):
                while not watcher.stats.bookmarks.get("pod"):  # noqa: ASYNC110 (polling outside state)
                    await anyio.sleep(0.02)
            fake.fail_next("pod", 1)
            fake.drop_watches()
            fake.put("pod", pod("shop", "after-500", "10.231.4.1", "node-a"))
            with anyio.fail_after(10):
                while not any(c.key == "pod/shop/after-500" for c in changes):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert watcher.stats.errors == {"pod": 4} and watcher.stats.lists == {"pod": 1}
            tg.cancel_scope.cancel()
    finally:
        await api.close()
