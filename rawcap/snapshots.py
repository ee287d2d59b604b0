"""Snapshots: immutable, cluster-wide copies of a time window, writer and reader.

A snapshot copies the batches of a window, byte for byte as they travelled on
``rawcap.packets``, into an object store (``snapshots.url``: a local directory by default,
``s3://bucket/prefix`` on the stack), so the window survives the rolling topic recycling it.

Layout under the store root::

    <id>/data/<node>/<000000>.rcsg   batch streams (schemas.stream framing), <= 64 MiB each
    <id>/k8s.msgpack                 with --namespace/--pod: the rawcap.k8s messages used
    <id>/manifest.json               written last: the snapshot exists once this exists

Every object is written create-only (``mode="create"``: ``If-None-Match: *`` on S3,
``O_EXCL`` locally), so nothing is ever overwritten; a second create with the same name is
refused. The manifest lists the sha256 and size of every object; :func:`verify_snapshot`
recomputes them and names each changed or missing object. The window and filters are
recorded in the manifest: :func:`open_snapshot` applies them again, so a snapshot yields
the same packets as the window did when it was taken, and workloads resolve from the stored
``k8s.msgpack`` copy after compaction has dropped the old owners of reused IPs.

``forensics`` creates snapshots (:class:`SnapshotWriter`) and reads them; the dissector
reads them too (``rawcap dissect --source snapshot:ID``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import anyio
import msgpack

from schemas.errors import BatchError, ConfigError, RawcapError, TransportError
from schemas.stream import FRAME, STREAM_HEADER, frame_batch, split_frames, stream_header

from .config import Config
from .filters import PacketFilter, both
from .timeparse import format_ns
from .window import ValueLane, WindowReader
from .workloads import Workloads

if TYPE_CHECKING:
    from obstore._store._aws import S3Config

__all__ = (
    "FORMAT",
    "K8S_COPY",
    "K8S_FORMAT",
    "MANIFEST",
    "OBJECT_BYTES",
    "RecordingWorkloads",
    "SnapshotExists",
    "SnapshotNotFound",
    "SnapshotRead",
    "SnapshotStore",
    "SnapshotWriter",
    "delete_snapshot",
    "list_snapshots",
    "load_manifest",
    "new_id",
    "object_lanes",
    "open_snapshot",
    "snapshot_lanes",
    "snapshot_workloads",
    "verify_snapshot",
)

MANIFEST = "manifest.json"
FORMAT = "rawcap.snapshot/1"
K8S_COPY = "k8s.msgpack"
K8S_FORMAT = "rawcap.k8s-copy/1"
#: Data objects are cut at this size.
OBJECT_BYTES = 64 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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


# -- writing ---------------------------------------------------------------------------------
class RecordingWorkloads(Workloads):
    """:class:`Workloads` that also keeps every ``rawcap.k8s`` message it applied, in order
    (``RecordingWorkloads.load(cfg)``), so that a snapshot can store the state it used."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[bytes, bytes | None, int]] = []

    def apply(self, key: bytes | str | None, value: bytes | None, timestamp_ms: int) -> None:
        if key:
            self.raw.append((key.encode() if isinstance(key, str) else bytes(key), value, timestamp_ms))
        super().apply(key, value, timestamp_ms)


def new_id(name: str | None) -> str:
    """The snapshot id: ``name`` (checked), else ``snap-<UTC time>-<6 hex digits>``."""
    if name:
        if not _NAME_RE.match(name):
            raise ConfigError(f"--name {name!r} is invalid: letters, digits, '.', '_' and '-' (max 100)")
        return name
    return time.strftime("snap-%Y%m%dT%H%M%SZ-", time.gmtime()) + secrets.token_hex(3)


@dataclass
class _NodeObjects:
    """Packs one node's batches into <= ``OBJECT_BYTES`` stream objects."""

    store: SnapshotStore
    prefix: str
    node: str
    objects: list[dict[str, Any]]
    buf: list[bytes | memoryview] | None = None
    size: int = 0
    count: int = 0
    batches: int = 0

    async def add(self, value: bytes | memoryview) -> None:
        if self.buf is None:
            self.buf, self.size, self.batches = [stream_header()], STREAM_HEADER.size, 0
        self.buf.append(frame_batch(value))
        self.buf.append(value)
        self.size += FRAME.size + len(value)
        self.batches += 1
        if self.size >= OBJECT_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self.buf is None:
            return
        data = b"".join(self.buf)
        rel = f"data/{self.node}/{self.count:06d}.rcsg"
        await self.store.put_create(f"{self.prefix}/{rel}", data)
        self.objects.append(
            {
                "path": rel,
                "node": self.node,
                "size": len(data),
                "batches": self.batches,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        self.count += 1
        self.buf = None


@dataclass
class SnapshotWriter:
    """Writes one new snapshot, create-only: batches (:meth:`add`), the ``rawcap.k8s`` copy
    (:meth:`put_k8s`), then the manifest (:meth:`finish`), which makes it exist. Objects
    left by an earlier, interrupted create with the same id are refused
    (:class:`SnapshotExists`)."""

    store: SnapshotStore
    sid: str
    objects: list[dict[str, Any]] = field(default_factory=list)
    _nodes: dict[str, _NodeObjects] = field(default_factory=dict)

    @classmethod
    async def create(cls, store: SnapshotStore, name: str | None) -> SnapshotWriter:
        sid = new_id(name)
        if await store.exists(f"{sid}/{MANIFEST}"):
            raise SnapshotExists(f"snapshot {sid!r} already exists in {store.url} (snapshots are immutable)")
        return cls(store, sid)

    def _leftovers(self) -> SnapshotExists:
        return SnapshotExists(
            f"snapshot {self.sid!r} has objects from an earlier, interrupted create; "
            f"run 'rawcap snapshot delete {self.sid} --force' first"
        )

    async def add(self, node: str, value: bytes | memoryview) -> None:
        """One batch of ``node``, in that node's order."""
        w = self._nodes.get(node)
        if w is None:
            w = self._nodes[node] = _NodeObjects(self.store, self.sid, node, self.objects)
        try:
            await w.add(value)
        except FileExistsError:
            raise self._leftovers() from None

    async def flush(self) -> None:
        """Write every node's last, partly filled object."""
        try:
            for w in self._nodes.values():
                await w.flush()
        except FileExistsError:
            raise self._leftovers() from None

    async def put_k8s(self, workloads: RecordingWorkloads) -> dict[str, Any]:
        """Store the ``rawcap.k8s`` messages ``workloads`` applied; its manifest entry."""
        data = msgpack.packb(
            {"format": K8S_FORMAT, "records": [[k, v, ts] for k, v, ts in workloads.raw]}, use_bin_type=True
        )
        try:
            await self.store.put_create(f"{self.sid}/{K8S_COPY}", data)
        except FileExistsError:
            raise self._leftovers() from None
        return {
            "path": K8S_COPY,
            "size": len(data),
            "records": len(workloads.raw),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    async def finish(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (``doc`` plus format, id, objects and who made it, when)."""
        manifest = {
            "format": FORMAT,
            "id": self.sid,
            **doc,
            "objects": self.objects,
            "created_at": format_ns(time.time_ns()),
            "created_by": f"{getpass.getuser()}@{socket.gethostname()}",
        }
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        try:
            await self.store.put_create(f"{self.sid}/{MANIFEST}", data)
        except FileExistsError:
            raise SnapshotExists(f"snapshot {self.sid!r} was created concurrently by someone else") from None
        return manifest


async def verify_snapshot(store: SnapshotStore, sid: str) -> list[str]:
    """Problems found (empty when intact): each names the object."""
    manifest = await load_manifest(store, sid)
    problems: list[str] = []
    checked = [*manifest["objects"], *([manifest["k8s"]] if manifest.get("k8s") else [])]
    listed = {f"{sid}/{o['path']}" for o in checked}
    for obj in checked:
        path = f"{sid}/{obj['path']}"
        try:
            data = await store.get(path)
        except FileNotFoundError:
            problems.append(f"missing: {obj['path']}")
            continue
        if len(data) != obj["size"]:
            problems.append(f"changed: {obj['path']} (size {len(data)}, manifest says {obj['size']})")
        elif hashlib.sha256(data).hexdigest() != obj["sha256"]:
            problems.append(f"changed: {obj['path']} (sha256 differs from the manifest)")
    for meta in await store.list_objects(f"{sid}/"):
        if meta["path"] not in listed and meta["path"] != f"{sid}/{MANIFEST}":
            problems.append(f"unexpected: {meta['path'][len(sid) + 1 :]} (not in the manifest)")
    return problems


async def delete_snapshot(store: SnapshotStore, sid: str) -> int:
    """Delete every object of ``sid`` (also the leftovers of an interrupted create)."""
    paths = [m["path"] for m in await store.list_objects(f"{sid}/")]
    if not paths:
        raise SnapshotNotFound(f"unknown snapshot id {sid!r} in {store.url} (see 'rawcap snapshot list')")
    # Manifest last: an interrupted delete leaves a snapshot that verify reports as damaged.
    paths.sort(key=lambda p: p.endswith("/" + MANIFEST))
    for i in range(0, len(paths), 500):
        await store.delete(paths[i : i + 500])
    return len(paths)
