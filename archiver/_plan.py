"""What to do with each record of a partition: sans-I/O bookkeeping of the archiver.

Per assigned partition, records are grouped into open *buffers*, one per (node, hour of the
batch's first packet): the batches of one future data object, consecutive in that node's
and hour's sub-stream of the partition. A buffer closes at ``archive.objectSize``, after
``archive.flushInterval``, when its node moves on to a later hour, under memory pressure,
and at shutdown or revocation. Closed buffers are uploaded; the offset the group may
commit is the smallest first offset of any buffer not yet durably written (open or
uploading), else the next offset to read.

After a crash (or a rebalance) a partition restarts from its committed offset, and objects
written after that commit exist already. :class:`PartitionPlan` is told, per (node, hour),
which objects of this partition the store holds (:meth:`PartitionPlan.set_known`): a
record inside an *indexed* object is skipped (already archived); a data object without its
index (the crash fell between the two writes) is *adopted*: the buffer that starts at its
first offset is cut exactly at its last offset, so the same key is written again with the
same bytes, and then its index. Nothing is archived twice and nothing is left behind.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rawcap.archive import parse_object_name
from schemas import BatchHeader
from schemas.stream import FRAME, STREAM_HEADER

__all__ = ("Buffer", "Known", "PartitionPlan", "known_objects")


@dataclass(frozen=True, slots=True)
class Known:
    """An object this partition already has in the store for one (node, hour)."""

    first: int
    last: int
    indexed: bool


def known_objects(topic: str, partition: int, data_paths: Iterable[str],
                  index_paths: Iterable[str]) -> list[Known]:
    """The objects of ``topic``/``partition`` among listed data and index paths of one
    (node, hour): indexed ones, and data objects whose index is missing."""

    def ranges(paths: Iterable[str], suffix: str) -> set[tuple[int, int]]:
        out = set()
        for path in paths:
            if not path.endswith(suffix):
                continue
            try:
                t, p, first, last = parse_object_name(path)
            except ValueError:
                continue
            if t == topic and p == partition:
                out.add((first, last))
        return out

    indexed = ranges(index_paths, ".json")
    found = [Known(f, la, True) for f, la in indexed]
    found += [Known(f, la, False) for f, la in ranges(data_paths, ".rcsg") - indexed]
    return found


@dataclass(slots=True, eq=False)
class Buffer:
    """The batches of one future data object."""

    plan: PartitionPlan
    node: str
    hour: int
    opened: float
    forced_last: int | None = None  # adopting an un-indexed object: cut exactly here
    batches: list[tuple[int, bytes, BatchHeader]] = field(default_factory=list)
    size: int = STREAM_HEADER.size
    oldest_ms: int = 0  # Kafka timestamp of the first batch (lag metric)
    first: int = -1  # offset of the first batch (kept when the batches are released)

    @property
    def first_offset(self) -> int:
        return self.first

    @property
    def packets(self) -> int:
        return sum(h.count for _o, _v, h in self.batches)

    def add(self, offset: int, value: bytes, header: BatchHeader, ts_ms: int) -> None:
        if self.first < 0:
            self.oldest_ms = ts_ms
            self.first = offset
        self.batches.append((offset, value, header))
        self.size += FRAME.size + len(value)


class PartitionPlan:
    """Buffers, uploads in flight and the commit point of one partition."""

    def __init__(self, topic: str, partition: int, object_size: int) -> None:
        self.topic = topic
        self.partition = partition
        self.object_size = object_size
        self.open: dict[tuple[str, int], Buffer] = {}
        self.uploading: dict[int, Buffer] = {}  # id(buffer) -> buffer
        self.known: dict[tuple[str, int], list[Known]] = {}
        self.position: int | None = None  # next offset to read
        self.committed: int | None = None
        self.skipped = 0  # batches found already archived
        self.adopted = 0  # un-indexed objects completed
        self.revoked = False
        self.abandoned = False  # revoked while uploads were still failing: drop them

    # -- recovery ----------------------------------------------------------------------------
    def needs_lookup(self, node: str, hour: int) -> bool:
        return (node, hour) not in self.known

    def set_known(self, node: str, hour: int, objects: Iterable[Known]) -> None:
        self.known[(node, hour)] = sorted(objects, key=lambda k: k.first)

    def _covering(self, node: str, hour: int, offset: int) -> Known | None:
        ks = self.known.get((node, hour))
        if not ks:
            return None
        i = bisect.bisect_right([k.first for k in ks], offset) - 1
        if i >= 0 and ks[i].first <= offset <= ks[i].last:
            return ks[i]
        return None

    # -- records -----------------------------------------------------------------------------
    def add(
        self, offset: int, value: bytes, header: BatchHeader, hour: int, ts_ms: int, now: float | None = None
    ) -> list[Buffer]:
        """Take one record; returns the buffers that it closed (to be uploaded)."""
        now = time.monotonic() if now is None else now
        node = header.node
        key = (node, hour)
        closed: list[Buffer] = []
        buf = self.open.get(key)
        k = self._covering(node, hour, offset)
        self.position = offset + 1
        if k is not None and k.indexed:
            # Archived before the last commit: the object ends before our open buffer goes on.
            if buf is not None:
                closed.append(self._close(key))
            self.skipped += 1
            return closed
        if k is not None:
            if offset == k.first:
                if buf is not None:
                    closed.append(self._close(key))
                buf = self._new(key, now, forced_last=k.last)
                self.adopted += 1
            elif buf is None or buf.forced_last != k.last:
                k = None  # its first batch is gone (retention): write our own object
        if k is None and buf is not None and buf.forced_last is not None:
            closed.append(self._close(key))
            buf = None
        # This node moved on to a later hour: its earlier hours are complete.
        for other in [o for o in self.open if o[0] == node and o[1] < hour]:
            if self.open[other].forced_last is None:
                closed.append(self._close(other))
        if buf is None:
            buf = self._new(key, now)
        elif buf.forced_last is None and buf.size + FRAME.size + len(value) > self.object_size:
            closed.append(self._close(key))
            buf = self._new(key, now)
        buf.add(offset, value, header, ts_ms)
        if buf.forced_last is not None and offset >= buf.forced_last:
            closed.append(self._close(key))
        return closed

    def skip(self, offset: int) -> None:
        """A record that is not archived (a corrupt batch sent to rawcap.dlq)."""
        self.position = offset + 1

    def _new(self, key: tuple[str, int], now: float, forced_last: int | None = None) -> Buffer:
        buf = self.open[key] = Buffer(self, key[0], key[1], now, forced_last)
        return buf

    def _close(self, key: tuple[str, int]) -> Buffer:
        buf = self.open.pop(key)
        self.uploading[id(buf)] = buf
        return buf

    def due(self, now: float, interval: float, *, caught_up_ms: int | None = None) -> list[Buffer]:
        """Buffers open for ``interval`` seconds (adopted ones wait for their last batch).

        With ``caught_up_ms`` (the partition has been read to its end; the wall clock in ms)
        also those whose first batch is stamped more than ``interval`` before that: the last
        partial objects of a backlog need not wait for batches that are not coming, while a
        live tail (stamped moments ago) still collects ``interval`` worth per object."""
        old_ms = None if caught_up_ms is None else caught_up_ms - interval * 1000
        keys = [k for k, b in self.open.items() if b.forced_last is None and (
            now - b.opened >= interval or (old_ms is not None and b.first >= 0 and b.oldest_ms <= old_ms))]
        return [self._close(k) for k in keys]

    def largest(self) -> Buffer | None:
        """Close the largest open buffer (memory pressure); None if none may close."""
        cands = [(b.size, k) for k, b in self.open.items() if b.forced_last is None and b.first >= 0]
        if not cands:
            return None
        return self._close(max(cands)[1])

    def close_all(self, *, forced_too: bool = True) -> list[Buffer]:
        keys = [k for k, b in self.open.items() if forced_too or b.forced_last is None]
        return [self._close(k) for k in keys]

    def written(self, buf: Buffer) -> None:
        self.uploading.pop(id(buf), None)

    # -- offsets -----------------------------------------------------------------------------
    @property
    def open_bytes(self) -> int:
        return sum(b.size for b in self.open.values())

    def commit_point(self) -> int | None:
        """The offset below which every record is durably archived (or skipped)."""
        firsts = [b.first for b in (*self.open.values(), *self.uploading.values()) if b.first >= 0]
        if firsts:
            return min(firsts)
        return self.position

    def to_commit(self) -> int | None:
        point = self.commit_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point

    def oldest_ms(self) -> int | None:
        ts = [b.oldest_ms for b in (*self.open.values(), *self.uploading.values()) if b.first >= 0]
        return min(ts) if ts else None

    def describe(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "open": len(self.open),
            "uploading": len(self.uploading),
            "position": self.position,
            "committed": self.committed,
        }
