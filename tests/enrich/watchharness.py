"""A running :class:`~enrich._watch.Watcher` whose changes land in a list and a WorkloadIndex,
for the watcher tests against the real API server and the fake one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from enrich._model import Change
from enrich._watch import Watcher, api_client
from schemas.k8s import WorkloadIndex

__all__ = ("Harness", "drain_into", "run_watcher")


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


@contextlib.asynccontextmanager
async def run_watcher(kubeconfig: Path, read_timeout: float = 10.0) -> AsyncIterator[Harness]:
    """``read_timeout``: the fake server sends a bookmark every 0.2 s; a real one about once a
    minute, so an idle watch on it needs a longer one."""
    api = await api_client(str(kubeconfig))
    watcher = Watcher(api, watch_timeout=30, read_timeout=read_timeout)
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
            with anyio.fail_after(30):
                await watcher.wait_synced()
                # what the initial lists sent is in the stream: let the drain take all of it
                while recv.statistics().current_buffer_used:  # noqa: ASYNC110 (polling a buffer)
                    await anyio.sleep(0.01)
                await anyio.sleep(0.05)
            yield h
            tg.cancel_scope.cancel()
    finally:
        await api.close()


async def drain_into(recv: Any, changes: list[Change]) -> None:
    """Append every change from ``recv`` to ``changes`` until the stream closes."""
    async with recv:
        async for ch in recv:
            changes.append(ch)
