"""``archive.retention``: delete whole hours older than the retention, index first.

A bucket lifecycle rule does the same job for free and is the better choice where the
store has one (docs/archiver.md gives the rules); this sweep is for stores without one
(a file:// archive, some S3-compatible servers) or users who cannot set bucket policy.
Only the instance that holds partition 0 sweeps; deletes are idempotent, so a sweep that
overlaps another after a rebalance does no harm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from rawcap.archive import ArchiveStore, hour_of, parse_hour_path
from schemas.errors import RawcapError

__all__ = ("retention_loop", "sweep")

log = logging.getLogger("rawcap.archive")


async def _old_keys(store: ArchiveStore, base: str, cutoff_hour: int) -> list[str]:
    """Keys under ``base/date=D/hour=H/...`` with hour < cutoff_hour."""
    keys: list[str] = []
    prefix = f"{base}/" if base else ""
    for date in await store.alist_dirs(base):
        if not date.startswith("date="):
            continue
        try:
            day = parse_hour_path(date, "hour=00")
        except ValueError:
            continue
        if day >= cutoff_hour:
            continue
        if day + 24 <= cutoff_hour:
            keys += [m["path"] for m in await store.alist(f"{prefix}{date}")]
            continue
        for hour in await store.alist_dirs(f"{prefix}{date}"):
            try:
                h = parse_hour_path(date, hour)
            except ValueError:
                continue
            if h < cutoff_hour:
                keys += [m["path"] for m in await store.alist(f"{prefix}{date}/{hour}")]
    return keys


async def sweep(store: ArchiveStore, cutoff_hour: int) -> int:
    """Delete every index and data object of hours before ``cutoff_hour``; returns the count."""
    index_keys = await _old_keys(store, "index", cutoff_hour)
    # Index objects go first: a reader is never sent to a data object that is gone.
    await store.delete(index_keys)
    data_keys: list[str] = []
    for node_dir in await store.alist_dirs(""):
        if node_dir.startswith("node="):
            data_keys += await _old_keys(store, node_dir, cutoff_hour)
    await store.delete(data_keys)
    n = len(index_keys) + len(data_keys)
    if n:
        log.info("retention: deleted %d objects of hours before the cutoff", n, extra={"objects": n})
    return n


async def retention_loop(store: ArchiveStore, retention: float, mine: Callable[[], bool],
                         metrics: Any) -> None:
    """Sweep every ``min(10 min, retention / 24)`` (at least a minute) while ``mine()``."""
    period = min(600.0, max(60.0, retention / 24))
    next_at = time.monotonic() + 2.0
    while True:
        await anyio.sleep(1.0)
        if time.monotonic() < next_at or not mine():
            continue
        cutoff = hour_of(time.time_ns() - int(retention * 1e9))
        try:
            metrics.retention_deleted.inc(await sweep(store, cutoff))
        except RawcapError as exc:
            metrics.errors.labels("retention").inc()
            log.warning("retention sweep failed (retried later): %s", exc)
        next_at = time.monotonic() + period
