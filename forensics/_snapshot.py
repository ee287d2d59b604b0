"""``rawcap snapshot create``: copy a window into a new snapshot.

The snapshot format (layout, create-only writes, manifest, verify, delete) is
:mod:`rawcap.snapshots`'s; this module reads the window and fills a
:class:`~rawcap.snapshots.SnapshotWriter`. Edge batches are kept whole; the manifest records
what an export of the snapshot yields per node (the window and filters applied again).
"""

from __future__ import annotations

from typing import Any

from rawcap.config import Config
from rawcap.filters import PacketFilter
from rawcap.snapshots import RecordingWorkloads, SnapshotStore, SnapshotWriter, object_lanes
from rawcap.timeparse import format_ns
from rawcap.window import WindowReader, WindowStats
from rawcap.workloads import Workloads

__all__ = ("create_snapshot",)


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
    writer = await SnapshotWriter.create(store, name)
    async with WindowReader(cfg, lo, hi, nodes=nodes, source=source) as reader:
        async for header, value in reader.batches():
            await writer.add(header.node, value)
        await writer.flush()
        await reader.check_nodes()
        stats = reader.stats
    # Count what an export of this snapshot will yield (window + filters applied).
    counted: WindowStats | None = None
    if writer.objects:
        async with WindowReader(
            cfg, lo, hi, lanes=object_lanes(store, writer.sid, writer.objects), source="snapshot", dlq=False
        ) as counter:
            async for _chunk in counter.packets(match=None if flt.empty else flt.match):
                pass
            counted = counter.stats
    k8s: dict[str, Any] | None = None
    if flt.needs_workloads and isinstance(workloads, RecordingWorkloads):
        k8s = await writer.put_k8s(workloads)
    return await writer.finish({
        "name": name or writer.sid,
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
        "k8s": k8s,
    })
