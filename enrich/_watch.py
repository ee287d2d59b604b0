"""List + watch of the Kubernetes API, one loop per resource kind (kubernetes_asyncio).

The loop is the informer pattern of client-go, written out so that its edge cases are ours
to test: list (paged) -> remember ``metadata.resourceVersion`` -> watch from it with
bookmarks -> on a dropped or timed-out watch resume from the newest resourceVersion seen
(event or bookmark), so no event is missed or repeated -> on ``410 Gone`` (HTTP status, or an
``ERROR`` event carrying a Status with code 410) re-list and diff the list against what we
knew, turning vanished objects into deletes -> on any other failure back off exponentially.

kubernetes_asyncio provides configuration (kubeconfig, in-cluster, TLS, tokens) and the
request building; responses are read raw (``_preload_content=False``) and parsed as JSON,
because deserialising 100,000 pods into model classes costs more than everything else here
and the compact records need a dozen fields.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from schemas.errors import ConfigError, TransportError

from ._model import KINDS, Change, ObjectCache, to_record

if TYPE_CHECKING:
    from kubernetes_asyncio import client

__all__ = ("LISTERS", "WatchStats", "Watcher", "api_client")

log = logging.getLogger("rawcap.enrich.watch")

#: kind -> (kubernetes_asyncio API class name, list-for-all-namespaces method). Names, not
#: classes: kubernetes_asyncio takes ~0.2 s to import and every other rawcap command would pay it.
LISTERS: dict[str, tuple[str, str]] = {
    "pod": ("CoreV1Api", "list_pod_for_all_namespaces"),
    "service": ("CoreV1Api", "list_service_for_all_namespaces"),
    "namespace": ("CoreV1Api", "list_namespace"),
    "node": ("CoreV1Api", "list_node"),
    "endpointslice": ("DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces"),
}

_PAGE = 500
_BIG_BODY = 1 << 20  # parse list pages larger than this in a worker thread


_PLURAL = {"pod": "pods", "service": "services", "namespace": "namespaces", "node": "nodes",
           "endpointslice": "endpointslices"}


def _refuse_forbidden(verb: str, kind: str, status: int, body: bytes) -> None:
    """401/403 will not heal by retrying: one clear error naming the verb and resource."""
    if status not in (401, 403):
        return
    try:
        message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    what = "unauthorized (the token or certificate was refused)" if status == 401 else "forbidden"
    raise ConfigError(f"k8s-watch: {verb} {_PLURAL.get(kind, kind)} {what}: "
                      f"{message or f'HTTP {status}'} (RBAC: docs/kubernetes.md)")


class _Gone(Exception):
    """The resourceVersion we asked for is too old: re-list."""


async def api_client(kubeconfig: str = "") -> client.ApiClient:
    """An ApiClient from ``kubeconfig``, else in-cluster config, else $KUBECONFIG/~/.kube/config."""
    from kubernetes_asyncio import client, config

    conf = client.Configuration()
    try:
        if kubeconfig:
            if not await anyio.Path(kubeconfig).exists():
                raise ConfigError(f"k8s.kubeconfig: {kubeconfig} does not exist")
            await config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=conf)
        else:
            await config.load_kube_config(client_configuration=conf)
    except ConfigError:
        raise
    except Exception as exc:  # kubernetes_asyncio raises ConfigException and friends
        where = kubeconfig or "in-cluster/~/.kube/config"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"k8s.kubeconfig: cannot load Kubernetes config from {where}: {msg}") from None
    return client.ApiClient(configuration=conf)


@dataclass
class WatchStats:
    """Counters per kind, for logs, metrics and tests."""

    lists: dict[str, int] = field(default_factory=dict)
    watches: dict[str, int] = field(default_factory=dict)
    gone: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    bookmarks: dict[str, int] = field(default_factory=dict)
    last_rv: dict[str, str] = field(default_factory=dict)

    def bump(self, counter: str, kind: str) -> None:
        table = getattr(self, counter)
        table[kind] = table.get(kind, 0) + 1


class Watcher:
    """Runs one list+watch loop per kind and sends :class:`Change` objects downstream.

    ``on_synced(kind, cache)`` is awaited after every successful (re-)list, once its changes
    have been sent; the first call per kind is the "initial state known" signal.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        kinds: tuple[str, ...] = KINDS,
        watch_timeout: float = 300.0,
        read_timeout: float = 90.0,
        backoff_max: float = 30.0,
        on_synced: Callable[[str, ObjectCache], Awaitable[None]] | None = None,
    ) -> None:
        self.api = api
        self.kinds = kinds
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout
        self.backoff_max = backoff_max
        self.on_synced = on_synced
        self.stats = WatchStats()
        self.caches: dict[str, ObjectCache] = {k: ObjectCache() for k in kinds}
        self.synced: dict[str, anyio.Event] = {k: anyio.Event() for k in kinds}

    async def wait_synced(self) -> None:
        for ev in self.synced.values():
            await ev.wait()

    async def run(self, send: MemoryObjectSendStream[Change]) -> None:
        async with send, anyio.create_task_group() as tg:
            for kind in self.kinds:
                tg.start_soon(self._loop, kind, send.clone())

    def _method(self, kind: str) -> Callable[..., Awaitable[Any]]:
        from kubernetes_asyncio import client

        cls, name = LISTERS[kind]
        return getattr(getattr(client, cls)(self.api), name)

    async def _list(self, kind: str) -> tuple[list[dict[str, Any]], str]:
        method = self._method(kind)
        items: list[dict[str, Any]] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"limit": _PAGE, "_preload_content": False,
                                      "_request_timeout": (10, self.read_timeout)}
            if token:
                kwargs["_continue"] = token
            resp = await method(**kwargs)
            try:
                body = await resp.read()
                _refuse_forbidden("list", kind, resp.status, body)
                if resp.status == 410:
                    raise _Gone()  # continue token expired: start the list over
                if not 200 <= resp.status < 300:
                    raise TransportError(f"list {kind}: HTTP {resp.status}: {body[:200]!r}")
            finally:
                resp.release()
            doc = (await anyio.to_thread.run_sync(json.loads, body)) if len(body) > _BIG_BODY \
                else json.loads(body)
            items.extend(doc.get("items") or ())
            meta = doc.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, meta.get("resourceVersion", "")

    async def _loop(self, kind: str, send: MemoryObjectSendStream[Change]) -> None:
        import aiohttp  # imported with kubernetes_asyncio, lazily (see LISTERS)

        cache = self.caches[kind]
        rv = ""
        backoff = 0.5
        async with send:
            while True:
                try:
                    if not rv:
                        items, rv = await self._list(kind)
                        self.stats.bump("lists", kind)
                        self.stats.last_rv[kind] = rv
                        now = time.time_ns()
                        for ch in cache.replace((to_record(kind, o) for o in items), now):
                            await send.send(ch)
                        log.info("listed", extra={"kind": kind, "objects": len(items), "rv": rv})
                        if self.on_synced is not None:
                            await self.on_synced(kind, cache)
                        self.synced[kind].set()
                    rv = await self._watch(kind, rv, cache, send)
                    backoff = 0.5
                except _Gone:
                    self.stats.bump("gone", kind)
                    log.info("resourceVersion too old (410 Gone): re-listing", extra={"kind": kind})
                    rv = ""
                except (aiohttp.ClientError, TimeoutError, OSError, TransportError, ValueError) as exc:
                    self.stats.bump("errors", kind)
                    rv = self.stats.last_rv.get(kind, "") if rv else ""
                    log.warning("watch failed, retrying", extra={
                        "kind": kind, "error": f"{type(exc).__name__}: {exc}", "backoff_s": backoff})
                    await anyio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, self.backoff_max)

    async def _watch(self, kind: str, rv: str, cache: ObjectCache,
                     send: MemoryObjectSendStream[Change]) -> str:
        """One watch request from ``rv``; returns the newest resourceVersion seen when the
        server ends it (timeout, dropped connection: the caller resumes from there)."""
        import aiohttp  # imported with kubernetes_asyncio, lazily (see LISTERS)

        self.stats.bump("watches", kind)
        timeout = int(self.watch_timeout * (1 + random.random()))  # spread like client-go
        resp = await self._method(kind)(
            watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=timeout,
            _preload_content=False, _request_timeout=(10, self.read_timeout),
        )
        try:
            if resp.status == 410:
                raise _Gone()
            if not 200 <= resp.status < 300:
                body = await resp.read()
                _refuse_forbidden("watch", kind, resp.status, body)
                raise TransportError(f"watch {kind}: HTTP {resp.status}: {body[:200]!r}")
            while True:
                try:
                    line = await resp.content.readline()
                except aiohttp.ClientPayloadError as exc:
                    log.info("watch connection dropped, resuming", extra={
                        "kind": kind, "rv": rv, "error": str(exc)})
                    return rv
                if not line:
                    return rv  # server closed the stream (timeoutSeconds): resume
                if not line.strip():
                    continue
                event = json.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise TransportError(f"watch {kind}: {obj.get('reason')}: {obj.get('message')}")
                new_rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if etype == "BOOKMARK":
                    self.stats.bump("bookmarks", kind)
                    rv = self.stats.last_rv[kind] = new_rv
                    continue
                record = to_record(kind, obj)
                now = time.time_ns()
                if etype == "DELETED":
                    ch = cache.delete(record.key, now)
                elif etype in ("ADDED", "MODIFIED"):
                    ch = cache.upsert(record, now)
                else:
                    raise ValueError(f"watch {kind}: unknown event type {etype!r}")
                self.stats.bump("events", kind)
                rv = self.stats.last_rv[kind] = new_rv
                if ch is not None:
                    await send.send(ch)
        finally:
            resp.release()
