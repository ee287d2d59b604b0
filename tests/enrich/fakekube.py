"""A Kubernetes API test server speaking the real list/watch protocol (the one allowed stand-in).

It stays only for what the real kube-apiserver of the test session (``kube`` fixture) cannot
be made to do on demand: drop every open watch mid-stream, answer ``410 Gone`` (as HTTP status
and as an ``ERROR`` event) after a compaction the test chooses, and fail the next requests
with ``500`` (tests/enrich/test_watch.py), plus the pipeline tests that need those. Everything
else (lists, watches, RBAC, in-cluster tokens, k8s-watch and enrich end to end) runs against
the real server.

What it implements, as the API server does:
- ``GET /api/v1/{pods,services,namespaces,nodes}`` and
  ``/apis/discovery.k8s.io/v1/endpointslices``: List objects (``kind: PodList`` ...) with
  ``metadata.resourceVersion``, paged with ``limit`` / ``continue``.
- ``?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S``: chunked
  HTTP, one JSON watch event per line (ADDED / MODIFIED / DELETED / BOOKMARK), replaying
  every event after N from the history, then live events; the stream ends after S seconds.
  ``resourceVersion`` empty or ``0`` starts with synthetic ADDED events for every object.
- A resourceVersion older than the compacted history: ``410 Gone`` either as HTTP status with
  a Status body or as a 200 stream with one ``ERROR`` event (``gone_mode``), both of which
  real servers produce.
- From the test: mutate objects (``put``/``delete``), ``compact()`` the history,
  ``drop_watches()`` (abort every open watch connection mid-stream), ``expire_watches()``
  (send an ERROR 410 event on every open watch), ``fail_next(kind, n)`` (the next ``n``
  requests for ``kind`` get ``500 InternalError`` with a Status body, as an overloaded
  API server or a broken etcd answers).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from typing import Any

from aiohttp import web

KIND_PATHS = {
    "pod": ("/api/v1/pods", "v1", "Pod"),
    "service": ("/api/v1/services", "v1", "Service"),
    "namespace": ("/api/v1/namespaces", "v1", "Namespace"),
    "node": ("/api/v1/nodes", "v1", "Node"),
    "endpointslice": ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
}


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class FakeKube:
    def __init__(self, *, bookmark_interval: float = 0.2, gone_mode: str = "event",
                 tls: ssl.SSLContext | None = None) -> None:
        self.rv = 1000
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KIND_PATHS}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.oldest_rv = self.rv  # watches from below this get 410
        self.bookmark_interval = bookmark_interval
        self.gone_mode = gone_mode
        self.requests: list[dict[str, str]] = []
        self._changed = asyncio.Event()
        self._watches: dict[int, web.Request] = {}
        self._expire = 0
        self._fail: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0
        self.tls = tls

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        for kind, (path, _api, _k) in KIND_PATHS.items():
            app.router.add_get(path, self._handler(kind))
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        return self.url

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
        })

    # -- mutations from the test ----------------------------------------------------------
    def _record(self, kind: str, etype: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, kind, etype, json.loads(json.dumps(obj))))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (ADDED or MODIFIED)."""
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        key = _key(obj)
        old = self.objects[kind].get(key)
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-11-23T00:00:00Z")
        _path, api, k = KIND_PATHS[kind]
        obj.setdefault("apiVersion", api)
        obj.setdefault("kind", k)
        self.objects[kind][key] = obj
        self._record(kind, "MODIFIED" if old else "ADDED", obj)
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects[kind].pop(f"{namespace}/{name}")
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(kind, "DELETED", obj)

    def compact(self) -> None:
        """Forget the history: any watch from an older resourceVersion now gets 410."""
        self.oldest_rv = self.rv
        self.history.clear()

    def drop_watches(self) -> None:
        """Abort every open watch connection mid-stream (no terminating chunk)."""
        for request in list(self._watches.values()):
            transport = request.transport
            if transport is not None:
                transport.abort()
        self._watches.clear()

    def fail_next(self, kind: str, n: int = 1) -> None:
        """The next ``n`` requests (list or watch) for ``kind`` fail with HTTP 500."""
        self._fail[kind] = self._fail.get(kind, 0) + n

    def expire_watches(self) -> None:
        """Send ``ERROR`` (Status 410) on every open watch, as after etcd compaction."""
        self._expire += 1
        self.compact()
        asyncio.get_running_loop().create_task(self._notify())

    # -- HTTP -----------------------------------------------------------------------------
    def _handler(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            q = request.query
            self.requests.append({"kind": kind, "at": str(asyncio.get_running_loop().time()), **q})
            if request.headers.get("Authorization") != "Bearer test-token":
                return web.json_response(_status(401, "Unauthorized", "no token"), status=401)
            if self._fail.get(kind):
                self._fail[kind] -= 1
                return web.json_response(_status(500, "InternalError", "etcdserver: request timed out"),
                                         status=500)
            if _go_bool(q.get("watch")):
                return await self._watch(request, kind)
            return self._list(kind, q)

        return handle

    def _list(self, kind: str, q: Any) -> web.Response:
        _path, api, k = KIND_PATHS[kind]
        items = sorted(self.objects[kind].values(), key=_key)
        start = int(q.get("continue") or 0)
        limit = int(q.get("limit") or 0) or len(items) + 1
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": f"{k}List", "apiVersion": api, "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        q = request.query
        rv_text = q.get("resourceVersion", "")
        rv = int(rv_text) if rv_text not in ("", "0") else None
        _path, api, k = KIND_PATHS[kind]
        if rv is not None and rv < self.oldest_rv and self.gone_mode == "http":
            msg = f"too old resource version: {rv} ({self.oldest_rv})"
            return web.json_response(_status(410, "Expired", msg), status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self._watches[id(request)] = request
        expire_at_start = self._expire
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(q.get("timeoutSeconds") or 3600)
        bookmarks = _go_bool(q.get("allowWatchBookmarks"))

        async def send(etype: str, obj: dict[str, Any]) -> None:
            await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

        try:
            if rv is not None and rv < self.oldest_rv:
                await send("ERROR", _status(410, "Expired", f"too old resource version: {rv}"))
                return resp
            if rv is None:
                for obj in sorted(self.objects[kind].values(), key=_key):
                    await send("ADDED", obj)
                pos = self.rv
            else:
                pos = rv
            while loop.time() < deadline:
                if self._expire != expire_at_start:
                    await send("ERROR", _status(410, "Expired", "too old resource version"))
                    return resp
                for erv, ekind, etype, obj in list(self.history):
                    if erv > pos and ekind == kind:
                        await send(etype, obj)
                pos = max(pos, self.rv)
                if bookmarks:
                    await send("BOOKMARK", {"kind": k, "apiVersion": api,
                                            "metadata": {"resourceVersion": str(pos)}})
                try:
                    await asyncio.wait_for(self._changed.wait(),
                                           min(self.bookmark_interval, max(0.0, deadline - loop.time())))
                except TimeoutError:
                    pass
            await resp.write_eof()
            return resp
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            self._watches.pop(id(request), None)


def _go_bool(text: str | None) -> bool:
    """Query booleans as the API server parses them (Go's strconv.ParseBool)."""
    return text in ("1", "t", "T", "TRUE", "true", "True")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# -- real-shaped objects ------------------------------------------------------------------
def pod(namespace: str, name: str, ip: str | None, node: str, *, phase: str = "Running",
        start: str = "2026-11-23T00:00:00Z", owner: tuple[str, str] | None = None,
        pod_template_hash: str = "", host_network: bool = False,
        container_id: str = "") -> dict[str, Any]:
    labels = {"app": name.split("-")[0]}
    if pod_template_hash:
        labels["pod-template-hash"] = pod_template_hash
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid4()), "controller": True,
                                    "blockOwnerDeletion": True}]
    status: dict[str, Any] = {"phase": phase, "startTime": start, "hostIP": "192.0.2.1",
                              "conditions": [{"type": "Ready", "status": "True"}]}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    if container_id:
        status["containerStatuses"] = [{"name": "main", "ready": True, "restartCount": 0,
                                        "image": "nginx:1.27", "imageID": "",
                                        "containerID": f"containerd://{container_id}",
                                        "state": {"running": {"startedAt": start}}}]
    return {"metadata": meta,
            "spec": {"nodeName": node, "hostNetwork": host_network,
                     "containers": [{"name": "main", "image": "nginx:1.27"}]},
            "status": status}


def service(namespace: str, name: str, cluster_ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
                     "selector": {"app": name}},
            "status": {"loadBalancer": {}}}


def endpointslice(namespace: str, service_name: str, pods: list[tuple[str, str]]) -> dict[str, Any]:
    return {"metadata": {"name": f"{service_name}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": pname, "namespace": namespace}}
                          for pname, ip in pods],
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}


def namespace(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}}


def node(name: str, ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {}, "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                                 {"type": "Hostname", "address": name}]}}
