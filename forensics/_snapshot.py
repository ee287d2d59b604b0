"""Immutable, cluster-wide snapshots of a time window.

A snapshot copies the batches of a window, byte for byte as they travelled on
``rawcap.packets``, into an object store (``snapshots.url``: a local directory by default,
``s3://bucket/prefix`` on the stack), so the window survives the rolling topic recycling it.

Layout under the store root::

    <id>/data/<node>/<000000>.rcsg   batch streams (schemas/stream.py framing), <= 64 MiB each
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
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from rawcap.config import Config
from rawcap.filters import PacketFilter
from rawcap.snapshots import (
    FORMAT,
    K8S_COPY,
    K8S_FORMAT,
    MANIFEST,
    SnapshotExists,
    SnapshotNotFound,
    SnapshotStore,
    load_manifest,
    object_lanes,
)
from rawcap.timeparse import format_ns
from rawcap.window import WindowReader
from rawcap.workloads import Workloads
from schemas.errors import ConfigError
from schemas.stream import frame_batch, stream_header

__all__ = (
    "RecordingWorkloads",
    "create_snapshot",
    "delete_snapshot",
    "new_id",
    "verify_snapshot",
)

OBJECT_BYTES = 64 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
            cfg, lo, hi, lanes=object_lanes(store, sid, objects), source="snapshot", dlq=False
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
