"""Immutable, cluster-wide snapshots of a time window.

A snapshot copies the batches of a window, byte for byte as they travelled on
``rawcap.packets``, into an object store (``snapshots.url``: a local directory by default,
``s3://bucket/prefix`` on the stack), so the window survives the rolling topic recycling it.

Layout under the store root::

    <id>/data/<node>/<000000>.rcsg   batch streams (schemas/_stream.py framing), <= 64 MiB each
    <id>/manifest.json               written last: the snapshot exists once this exists

Every object is written create-only (``mode="create"``: ``If-None-Match: *`` on S3,
``O_EXCL`` locally), so nothing is ever overwritten; a second create with the same name is
refused. The manifest lists the sha256 and size of every object; ``verify`` recomputes them
and names each changed or missing object. Edge batches are kept whole and the window and
filters are recorded in the manifest: exporting a snapshot applies them again, so it yields
the same packets as exporting the window from Kafka did.

With ``--namespace``/``--pod`` the snapshot also keeps ``<id>/k8s.msgpack``, the
``rawcap.k8s`` messages the filter was resolved with (listed in the manifest under ``k8s``
with its sha256): an export resolves workloads from that copy, so it still selects the same
packets after compaction has dropped the old owners of reused IPs.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import anyio
import msgpack

from rawcap.config import Config
from rawcap.filters import PacketFilter
from rawcap.timeparse import format_ns
from rawcap.window import ValueLane, WindowReader
from rawcap.workloads import Workloads
from schemas._stream import frame_batch, split_frames, stream_header
from schemas.errors import BatchError, ConfigError, RawcapError, TransportError

if TYPE_CHECKING:
    from obstore._store._aws import S3Config

__all__ = (
    "K8S_COPY",
    "MANIFEST",
    "RecordingWorkloads",
    "SnapshotExists",
    "SnapshotNotFound",
    "SnapshotStore",
    "create_snapshot",
    "snapshot_lanes",
    "snapshot_workloads",
    "verify_snapshot",
)

MANIFEST = "manifest.json"
FORMAT = "rawcap.snapshot/1"
K8S_COPY = "k8s.msgpack"
K8S_FORMAT = "rawcap.k8s-copy/1"
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


@dataclass
class _Writer:
    """Packs one node's batches into <= 64 MiB stream objects."""

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
            self.buf, self.size, self.batches = [stream_header()], 8, 0
        self.buf.append(frame_batch(value))
        self.buf.append(value)
        self.size += 8 + len(value)
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


def _k8s_copy(wl: RecordingWorkloads) -> bytes:
    return msgpack.packb(
        {"format": K8S_FORMAT, "records": [[k, v, ts] for k, v, ts in wl.raw]}, use_bin_type=True
    )


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


def new_id(name: str | None) -> str:
    if name:
        if not _NAME_RE.match(name):
            raise ConfigError(f"--name {name!r} is invalid: letters, digits, '.', '_' and '-' (max 100)")
        return name
    return time.strftime("snap-%Y%m%dT%H%M%SZ-", time.gmtime()) + secrets.token_hex(3)


async def create_snapshot(
    cfg: Config,
    store: SnapshotStore,
    *,
    lo: int,
    hi: int,
    name: str | None,
    nodes: list[str] | None,
    flt: PacketFilter,
    source: str = "kafka",
    workloads: Workloads | None = None,
) -> dict[str, Any]:
    """Copy ``[lo, hi)`` into ``store``; ``flt`` must be bound (``flt.bind(workloads)``) when it
    has ``--namespace``/``--pod``, and ``workloads`` is then stored with the snapshot when it
    is a :class:`RecordingWorkloads`."""
    sid = new_id(name)
    if await store.exists(f"{sid}/{MANIFEST}"):
        raise SnapshotExists(f"snapshot {sid!r} already exists in {store.url} (snapshots are immutable)")
    objects: list[dict[str, Any]] = []
    writers: dict[str, _Writer] = {}
    window_packets: dict[str, int] = {}
    async with WindowReader(cfg, lo, hi, nodes=nodes, source=source) as reader:
        async for header, value in reader.batches():
            w = writers.get(header.node)
            if w is None:
                w = writers[header.node] = _Writer(store, sid, header.node, objects)
            try:
                await w.add(value)
            except FileExistsError:
                raise SnapshotExists(
                    f"snapshot {sid!r} has objects from an earlier, interrupted create; "
                    f"run 'rawcap snapshot delete {sid} --force' first"
                ) from None
        for w in writers.values():
            await w.flush()
        await reader.check_nodes()
        stats = reader.stats
    # Count what an export of this snapshot will yield (window + filters applied).
    if objects:
        async with WindowReader(
            cfg, lo, hi, lanes=_memory_lanes(store, sid, objects), source="snapshot", dlq=False
        ) as counter:
            async for chunk in counter.packets(match=None if flt.empty else flt.match):
                for p in chunk:
                    window_packets[p.node] = window_packets.get(p.node, 0) + 1
            counted = counter.stats
    else:
        counted = None
    k8s: dict[str, Any] | None = None
    if flt.needs_workloads and isinstance(workloads, RecordingWorkloads):
        data = _k8s_copy(workloads)
        try:
            await store.put_create(f"{sid}/{K8S_COPY}", data)
        except FileExistsError:
            raise SnapshotExists(
                f"snapshot {sid!r} has objects from an earlier, interrupted create; "
                f"run 'rawcap snapshot delete {sid} --force' first"
            ) from None
        k8s = {
            "path": K8S_COPY,
            "size": len(data),
            "records": len(workloads.raw),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    manifest = {
        "format": FORMAT,
        "id": sid,
        "name": name or sid,
        "window": {"from_ns": lo, "to_ns": hi, "from": format_ns(lo), "to": format_ns(hi)},
        "filters": flt.describe(),
        "source": source,
        "nodes": {
            n: {
                **st.as_dict(),
                "packets": counted.nodes[n].packets if counted and n in counted.nodes else 0,
                "bytes": counted.nodes[n].bytes if counted and n in counted.nodes else 0,
            }
            for n, st in sorted(stats.nodes.items())
            if st.batches
        },
        "recycled": stats.recycled,
        "corrupt_batches": stats.corrupt,
        "objects": objects,
        "k8s": k8s,
        "created_at": format_ns(time.time_ns()),
        "created_by": f"{getpass.getuser()}@{socket.gethostname()}",
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    try:
        await store.put_create(f"{sid}/{MANIFEST}", data)
    except FileExistsError:
        raise SnapshotExists(f"snapshot {sid!r} was created concurrently by someone else") from None
    return manifest


def _memory_lanes(store: SnapshotStore, sid: str, objects: list[dict[str, Any]]) -> list[ValueLane]:
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
    return manifest, _memory_lanes(store, sid, manifest["objects"])


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
