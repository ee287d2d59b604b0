"""Reading snapshots: the object store, manifests and the batches of a snapshot.

A snapshot (made by ``rawcap snapshot create``, see ``forensics/_snapshot.py`` for the layout
and the immutability rules) is read by forensics (export, consume) and by the dissector
(``rawcap dissect --source snapshot:ID``); services may not import each other, so the read
side lives here, in shared plumbing. :func:`open_snapshot` turns a snapshot id into a
:class:`~rawcap.window.WindowReader` plus the filter to apply, exactly as forensics always has:
the stored window and filters are applied again, so a snapshot yields the same packets as the
window did when it was taken.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import anyio
import msgpack

from schemas.errors import BatchError, ConfigError, RawcapError, TransportError
from schemas.stream import split_frames

from .config import Config
from .filters import PacketFilter, both
from .window import ValueLane, WindowReader
from .workloads import Workloads

if TYPE_CHECKING:
    from obstore._store._aws import S3Config

__all__ = (
    "FORMAT",
    "K8S_COPY",
    "K8S_FORMAT",
    "MANIFEST",
    "SnapshotExists",
    "SnapshotNotFound",
    "SnapshotRead",
    "SnapshotStore",
    "list_snapshots",
    "load_manifest",
    "object_lanes",
    "open_snapshot",
    "snapshot_lanes",
    "snapshot_workloads",
)

MANIFEST = "manifest.json"
FORMAT = "rawcap.snapshot/1"
K8S_COPY = "k8s.msgpack"
K8S_FORMAT = "rawcap.k8s-copy/1"


class SnapshotExists(RawcapError):
    """A snapshot with this id/name exists already (snapshots are immutable)."""


class SnapshotNotFound(RawcapError):
    """No snapshot with this id."""


class SnapshotStore:
    """Create-only object store (obstore) for snapshots; blocking calls run in threads."""

    def __init__(self, url: str) -> None:
        import obstore
        from obstore.store import LocalStore, S3Store

        self._ob = obstore
        self.url = url or "./.rawcap/snapshots"
        parsed = urlparse(self.url)
        if parsed.scheme in ("", "file"):
            root = parsed.path if parsed.scheme == "file" else self.url
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"snapshots.url {self.url}: cannot create directory: {exc.strerror}"
                ) from None
            self.store: Any = LocalStore(os.path.abspath(root))
        elif parsed.scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
            config: S3Config = {}
            if endpoint:
                config["endpoint"] = endpoint
                config.setdefault("region", os.environ.get("AWS_REGION", "us-east-1"))
            self.store = S3Store(
                parsed.netloc,
                prefix=parsed.path.strip("/") or None,
                config=config,
                client_options={"allow_http": endpoint.startswith("http://")} if endpoint else None,
            )
        else:
            raise ConfigError(
                f"snapshots.url {self.url!r} is invalid: expected a directory, file:// or s3://"
            )

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            return fn(*args, **kwargs)

        try:
            return await anyio.to_thread.run_sync(run)
        except FileNotFoundError:
            raise
        except Exception as exc:
            exc_mod = type(exc).__module__
            if exc_mod.startswith("obstore") and type(exc).__name__ == "NotFoundError":
                raise FileNotFoundError(str(args[0]) if args else "") from None
            if exc_mod.startswith("obstore") and type(exc).__name__ in (
                "AlreadyExistsError",
                "PreconditionError",
            ):
                raise FileExistsError(str(args[0]) if args else "") from None
            if exc_mod.startswith("obstore"):
                raise TransportError(f"snapshot store {self.url}: {str(exc).splitlines()[0]}") from None
            raise

    async def put_create(self, path: str, data: bytes) -> None:
        await self._call(self._ob.put, self.store, path, data, mode="create")

    async def get(self, path: str) -> bytes:
        def read() -> bytes:
            return bytes(self._ob.get(self.store, path).bytes())

        return await self._call(read)

    async def exists(self, path: str) -> bool:
        try:
            await self._call(self._ob.head, self.store, path)
            return True
        except FileNotFoundError:
            return False

    async def list_objects(self, prefix: str | None = None) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for chunk in self._ob.list(self.store, prefix):
                out.extend(chunk)
            return out

        return await self._call(run)

    async def delete(self, paths: list[str]) -> None:
        if paths:
            await self._call(self._ob.delete, self.store, paths)


async def snapshot_workloads(store: SnapshotStore, sid: str, manifest: dict[str, Any]) -> Workloads | None:
    """The workload state stored with the snapshot (``--namespace``/``--pod``), or None."""
    ent = manifest.get("k8s")
    if not ent:
        return None
    path = f"{sid}/{ent['path']}"
    try:
        data = await store.get(path)
    except FileNotFoundError:
        raise RawcapError(
            f"snapshot {sid}: object {ent['path']} is missing (run 'rawcap snapshot verify {sid}')"
        ) from None
    if hashlib.sha256(data).hexdigest() != ent["sha256"]:
        raise RawcapError(
            f"snapshot {sid}: object {ent['path']} fails its sha256 check "
            f"(run 'rawcap snapshot verify {sid}')"
        )
    try:
        doc = msgpack.unpackb(data, raw=False)
        if doc.get("format") != K8S_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        wl = Workloads()
        for key, value, ts in doc["records"]:
            wl.apply(key, value, ts)
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
        raise RawcapError(f"snapshot {sid}: {ent['path']} is not valid: {exc}") from None
    return wl


def object_lanes(store: SnapshotStore, sid: str, objects: list[dict[str, Any]]) -> list[ValueLane]:
    """One lane per node over the given snapshot objects, each checked against its sha256."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_node.setdefault(obj["node"], []).append(obj)
    return [
        ValueLane(f"snapshot:{sid}:{n}", _values(store, sid, objs, check=True)) for n, objs in by_node.items()
    ]


async def _values(
    store: SnapshotStore, sid: str, objects: list[dict[str, Any]], *, check: bool
) -> AsyncIterator[bytes | memoryview]:
    for obj in objects:
        path = f"{sid}/{obj['path']}"
        try:
            data = await store.get(path)
        except FileNotFoundError:
            raise RawcapError(
                f"snapshot {sid}: object {obj['path']} is missing (run 'rawcap snapshot verify {sid}')"
            ) from None
        if check and hashlib.sha256(data).hexdigest() != obj["sha256"]:
            raise RawcapError(
                f"snapshot {sid}: object {obj['path']} fails its sha256 check "
                f"(run 'rawcap snapshot verify {sid}')"
            )
        try:
            frames, _ = split_frames(data, name=path)
        except BatchError as exc:
            raise RawcapError(f"snapshot {sid}: {exc}") from None
        for f in frames:
            yield f.value


async def load_manifest(store: SnapshotStore, sid: str) -> dict[str, Any]:
    try:
        data = await store.get(f"{sid}/{MANIFEST}")
    except FileNotFoundError:
        raise SnapshotNotFound(
            f"unknown snapshot id {sid!r} in {store.url} (see 'rawcap snapshot list')"
        ) from None
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
    except (ValueError, AttributeError) as exc:
        raise RawcapError(f"snapshot {sid}: manifest is not valid: {exc}") from None
    return doc


async def snapshot_lanes(store: SnapshotStore, sid: str) -> tuple[dict[str, Any], list[ValueLane]]:
    manifest = await load_manifest(store, sid)
    return manifest, object_lanes(store, sid, manifest["objects"])


async def list_snapshots(store: SnapshotStore) -> list[dict[str, Any]]:
    out = []
    for meta in await store.list_objects():
        path = meta["path"]
        if path.endswith("/" + MANIFEST) and path.count("/") == 1:
            try:
                out.append(await load_manifest(store, path.split("/")[0]))
            except RawcapError as exc:
                out.append({"id": path.split("/")[0], "error": str(exc)})
    return sorted(out, key=lambda m: m.get("created_at", ""))


@dataclass
class SnapshotRead:
    """What :func:`open_snapshot` gives: an unopened reader, the (bound) filter to pass to
    its ``packets``/``items``, the workload index if one was needed, and the manifest."""

    reader: WindowReader
    filter: Any
    workloads: Workloads | None
    manifest: dict[str, Any]


async def open_snapshot(
    cfg: Config,
    sid: str,
    *,
    window: tuple[int, int] | None = None,
    nodes: list[str] | None = None,
    flt: PacketFilter | None = None,
    want_workloads: bool = False,
    load_workloads: Callable[[], Awaitable[Workloads]] | None = None,
) -> SnapshotRead:
    """Snapshot ``sid`` of ``snapshots.url`` as a reader: its stored window (narrowed to
    ``window`` if given), its stored filters AND ``flt``, restricted to ``nodes``.

    Workloads (for ``--namespace``/``--pod`` or comments) come from the copy of ``rawcap.k8s``
    the snapshot kept, else from ``load_workloads()`` (``rawcap.k8s`` as it is now)."""
    flt = flt if flt is not None else PacketFilter.build()
    store = SnapshotStore(cfg.get("snapshots.url"))
    manifest, lanes = await snapshot_lanes(store, sid)
    w = manifest["window"]
    lo, hi = w["from_ns"], w["to_ns"]
    if window is not None:
        lo, hi = max(lo, window[0]), min(hi, window[1])
        lo = min(lo, hi)
    stored = manifest.get("filters") or {}
    snap_flt = PacketFilter.build(
        hosts=stored.get("hosts", []),
        ports=stored.get("ports", []),
        proto=stored.get("proto") or None,
        expression=stored.get("expression") or None,
        namespaces=stored.get("namespaces", []),
        pods=stored.get("pods", []),
    )
    wl: Workloads | None = None
    if want_workloads or flt.needs_workloads or snap_flt.needs_workloads:
        wl = await snapshot_workloads(store, sid, manifest)
        if wl is None:
            wl = await load_workloads() if load_workloads is not None else await Workloads.load(cfg)
        flt, snap_flt = flt.bind(wl), snap_flt.bind(wl)
    for n in nodes or []:
        if n not in manifest["nodes"]:
            raise ConfigError(f"unknown node {n!r} in snapshot {sid} (nodes: {', '.join(manifest['nodes'])})")
    if nodes:
        lanes = [ln for ln in lanes if ln.name.rsplit(":", 1)[1] in nodes]
    reader = WindowReader(cfg, lo, hi, nodes=nodes, lanes=lanes, source="snapshot", dlq=False)
    return SnapshotRead(reader, both(snap_flt, flt), wl, manifest)
