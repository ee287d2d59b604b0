"""``rawcap archive ls``: what the archive holds per node and hour, read from the index."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio

from rawcap.archive import ArchiveStore, IndexEntry, hour_of, hour_path
from rawcap.timeparse import format_ns

__all__ = ("format_row", "hour_summaries")


async def hour_summaries(
    store: ArchiveStore, lo: int, hi: int, nodes: Iterable[str] | None = None, parallel: int = 16
) -> list[dict[str, Any]]:
    """One row per (node, hour) overlapping ``[lo, hi)``, in hour then node order."""
    try:
        return await _summaries(store, lo, hi, nodes, parallel)
    except BaseExceptionGroup as eg:
        from ._summary import one_error

        raise one_error(eg) from None


async def _summaries(
    store: ArchiveStore, lo: int, hi: int, nodes: Iterable[str] | None, parallel: int
) -> list[dict[str, Any]]:
    wanted = sorted(set(nodes)) if nodes else None
    hours: list[int] = await anyio.to_thread.run_sync(
        store.hours_present, hour_of(lo), hour_of(max(lo, hi - 1))
    )
    limiter = anyio.CapacityLimiter(parallel)
    keys: list[str] = []

    async def list_hour(h: int) -> None:
        keys.extend(await anyio.to_thread.run_sync(store.index_keys, h, wanted, limiter=limiter))

    async with anyio.create_task_group() as tg:
        for h in hours:
            tg.start_soon(list_hour, h)
    entries: list[IndexEntry] = []

    async def load(key: str) -> None:
        e = await anyio.to_thread.run_sync(store.load_index, key, limiter=limiter)
        if e is not None:
            entries.append(e)

    async with anyio.create_task_group() as tg:
        for k in keys:
            tg.start_soon(load, k)
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    seqs: dict[tuple[int, str], list[int]] = {}
    for e in entries:
        key = (e.hour, e.node)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "node": e.node,
                "hour": format_ns(e.hour * 3_600_000_000_000)[:13] + ":00Z",
                "path": hour_path(e.hour),
                "objects": 0,
                "batches": 0,
                "packets": 0,
                "bytes": 0,
                "t0": None,
                "t1": None,
                "partitions": set(),
            }
        row["objects"] += 1
        row["batches"] += len(e.frames)
        row["packets"] += e.packets
        row["bytes"] += e.size
        row["partitions"].add(e.partition)
        if e.frames:
            row["t0"] = e.t0 if row["t0"] is None else min(row["t0"], e.t0)
            row["t1"] = e.t1 if row["t1"] is None else max(row["t1"], e.t1)
        seqs.setdefault(key, []).extend(f.seq for f in e.frames)
    out = []
    for key in sorted(rows):
        row = rows[key]
        s = seqs.get(key, [])
        uniq = sorted(set(s))
        row["partitions"] = sorted(row["partitions"])
        row["seq_min"] = uniq[0] if uniq else None
        row["seq_max"] = uniq[-1] if uniq else None
        row["duplicates"] = len(s) - len(uniq)
        row["missing"] = (uniq[-1] - uniq[0] + 1 - len(uniq)) if uniq else 0
        row["first"] = format_ns(row["t0"]) if row["t0"] is not None else None
        row["last"] = format_ns(row["t1"]) if row["t1"] is not None else None
        out.append(row)
    return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


HEADER = f"{'NODE':24} {'HOUR (UTC)':17} {'OBJECTS':>7} {'BATCHES':>8} {'PACKETS':>10} {'BYTES':>10}  SEQ"


def format_row(row: dict[str, Any]) -> str:
    seq = f"{row['seq_min']}..{row['seq_max']}" if row["seq_min"] is not None else "-"
    notes = []
    if row["missing"]:
        notes.append(f"{row['missing']} missing")
    if row["duplicates"]:
        notes.append(f"{row['duplicates']} repeated")
    tail = f"  ({', '.join(notes)})" if notes else ""
    return (
        f"{row['node']:24} {row['hour']:17} {row['objects']:7d} {row['batches']:8d} {row['packets']:10d} "
        f"{_size(row['bytes']):>10}  {seq}{tail}"
    )
