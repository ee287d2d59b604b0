"""Lanes that are not Kafka: any async iterator of batch values (snapshots, the archive),
and a node's FIFO buffer directory (``--source local``)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator, Iterable
from functools import partial
from pathlib import Path

import anyio

from schemas.errors import ConfigError

from ._types import FETCH_BATCHES, LaneValues

__all__ = ("FileLane", "ValueLane", "local_lanes")


class ValueLane:
    """A lane over any async iterator of batch values (snapshots, archives)."""

    def __init__(self, name: str, values: AsyncIterator[bytes | memoryview]) -> None:
        self.name = name
        self._it = values

    async def next_values(self) -> LaneValues | None:
        out: LaneValues = []
        async for value in self._it:
            out.append((value, {"source": self.name}))
            if len(out) >= FETCH_BATCHES:
                break
        return out or None

    async def aclose(self) -> None:
        aclose = getattr(self._it, "aclose", None)
        if aclose is not None:
            await aclose()


class FileLane:
    """A node FIFO buffer directory (:mod:`rawcap.segments`): its segments, oldest first."""

    def __init__(self, node_dir: Path) -> None:
        self.name = f"local:{node_dir.name}"
        self._dir = node_dir
        self._files: deque[Path] | None = None

    async def next_values(self) -> LaneValues | None:
        # Imported here: rawcap.segments loads its crc32 (ctypes.util) at import, which a
        # Kafka read (this package's other lanes) has no use for.
        from ..segments import read_segment, segment_paths

        if self._files is None:
            self._files = deque(segment_paths(self._dir))
        while self._files:
            path = self._files.popleft()
            frames = await anyio.to_thread.run_sync(partial(read_segment, path, last=not self._files))
            if frames:
                return [(value, {"source": str(path), "offset": offset}) for value, offset in frames]
        return None

    async def aclose(self) -> None:
        return None


def local_lanes(buffer_dir: str | os.PathLike[str], nodes: Iterable[str] | None) -> list[FileLane]:
    """Lanes over ``<bufferDir>/<node>/*.rcsg``; an unknown node is a one-line error."""
    root = Path(buffer_dir)
    if not root.is_dir():
        raise ConfigError(f"buffer directory {root} does not exist (capture.bufferDir)")
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    wanted = list(nodes) if nodes else present
    for n in wanted:
        if n not in present:
            raise ConfigError(
                f"unknown node {n!r}: no buffer under {root} (nodes there: {', '.join(present) or 'none'})"
            )
    return [FileLane(root / n) for n in wanted]
