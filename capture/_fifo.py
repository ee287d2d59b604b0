"""The node FIFO buffer: batches appended to segment files, bounded by a byte budget.

The on-disk format (segment files, ``shipped.json``) is :mod:`rawcap.segments`'s; this
module decides what goes where. Sequence numbers are per node, start at 1 and never
repeat: on restart the next one is one past the highest found in the segments or in
``shipped.json``. When a batch would push the buffer over its budget the oldest segment is
deleted first; batches in it that the broker had not acknowledged are counted as lost
(batches, packets, raw bytes) and logged.

While a shipper is connected (``holding``) the FIFO keeps new batches in memory first and
writes a batch to disk only when Kafka has not acknowledged it within ``hold_for`` seconds
or when more than ``hold_bytes`` wait. A healthy broker acknowledges a batch in tens of
milliseconds, so the node's disk sees almost nothing. Without a shipper (``--no-kafka``,
broker down) every batch goes to disk at once. A crash loses what only memory held; so
that consumers still see the loss, the sequence numbers memory may use are reserved in
``shipped.json`` first (``reserved_seq``) and a restart after a crash starts past them.

Besides the loss counters kept across restarts (``lost_*``, in ``shipped.json``), the FIFO
splits the batches of this run (sequence numbers from ``run_first_seq`` on) exactly: each
ends up delivered (``run_shipped_*``: Kafka acknowledged it), lost (``run_lost_*``: recycled
or refused by a full disk before Kafka took it) or pending (:meth:`run_pending`: still in
memory or on disk). A batch whose segment is recycled while it is in a send (``in_flight_to``)
is neither yet: it is delivered if that send is acknowledged (or Kafka turns out to hold it
when the shipper reconnects), lost otherwise (:meth:`abandon_in_flight`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from rawcap.segments import (
    LOCK_FILE,
    SegmentFile,
    read_state,
    scan_segment,
    segment_name,
    segment_paths,
    write_state,
)
from schemas.errors import RawcapError
from schemas.stream import crc32

from ._batcher import ClosedBatch, Piece

__all__ = ("Entry", "Fifo")

log = logging.getLogger("rawcap.capture")

_RECENT = 16
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: ``shipped.json`` is rewritten once a second or every 32 acknowledged batches, whichever
#: comes first (and by the agent's stats loop when acknowledgements stop): each rewrite is a
#: rename, an ext4 journal round trip. A crash forgets at most these acknowledgements plus
#: the batches in flight; the restarted shipper finds them at the tail of its partition and
#: does not resend them (``Shipper._skip_already_in_kafka`` reads the last 64 records,
#: ``tests/capture/test_units.py`` checks that the window fits).
STATE_EVERY_S = 1.0
STATE_EVERY_BATCHES = 32
#: Sequence numbers reserved in ``shipped.json`` ahead of the batches held in memory.
RESERVE = 256


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[Fifo, _P], _R]) -> Callable[Concatenate[Fifo, _P], _R]:
    """Run a :class:`Fifo` method under its lock: the ring thread appends while the event
    loop's shipper and stats read."""

    @functools.wraps(method)
    def wrapper(self: Fifo, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


@dataclass(slots=True)
class Entry:
    """Where one batch lives: its segment, offset of its value, and what it holds."""

    seq: int
    offset: int
    length: int
    count: int
    raw_bytes: int
    first_ns: int


@dataclass(slots=True)
class Segment:
    """One segment file. Its entries are in sequence order, with gaps where a batch was
    acknowledged while still in memory (it never reached the disk)."""

    path: Path
    size: int
    entries: list[Entry] = field(default_factory=list)

    def find(self, seq: int) -> Entry | None:
        i = bisect_left(self.entries, seq, key=lambda e: e.seq)
        return self.entries[i] if i < len(self.entries) and self.entries[i].seq == seq else None


@dataclass(slots=True)
class Held:
    """A batch kept in memory until Kafka acknowledges it or it is spilled to disk."""

    entry: Entry
    parts: tuple[Piece, ...]
    since: float


class Fifo:
    """Owns the node's buffer directory. Single writer (the agent's ring thread); the
    shipper and the stats loop read from the event loop, so the public methods hold
    ``_lock`` (uncontended almost always: one acquire per batch on each side)."""

    def __init__(self, root: str | os.PathLike[str], node: str, *, budget: int,
                 segment_size: int, on_append: Callable[[], None] | None = None,
                 hold_bytes: int = 0, hold_for: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if "/" in node or node in ("", ".", ".."):
            raise RawcapError(f"node name {node!r} cannot be used as a directory name")
        self.dir = Path(root) / node
        self.node = node
        self._lock = threading.RLock()
        #: Held by the shipper while it takes batches for a send and records ``in_flight_to``,
        #: so that no segment is recycled in between (reentrant; the methods take it too).
        self.lock = self._lock
        self._full_logged = -1e9
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lockfd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise RawcapError(f"buffer directory {self.dir} is not writable") from None
        except OSError as exc:
            raise RawcapError(f"buffer directory {self.dir} cannot be used: {exc.strerror}") from None
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lockfd)
            raise RawcapError(f"buffer directory {self.dir} is in use by another capture agent") \
                from None
        self.budget = budget
        # Recycling frees one segment at a time: keep segments small next to the budget.
        self.segment_size = max(64 * 1024, min(segment_size, budget // 4))
        self.on_append = on_append
        self.acked_seq = 0
        self.lost_batches = self.lost_packets = self.lost_bytes = 0
        self.batches_written = 0
        self._reserved = 0
        self._load_state()
        self.segments: list[Segment] = []
        self._scan()
        last = max((seg.entries[-1].seq for seg in self.segments if seg.entries), default=0)
        known = max(last, self.acked_seq)
        if self._reserved > known:
            log.warning("the previous agent stopped without flushing: sequence numbers %d..%d "
                        "are skipped, and the batches among them that only memory held are lost "
                        "(consumers see the gap)", known + 1, self._reserved,
                        extra={"first_seq": known + 1, "last_seq": self._reserved})
        self.next_seq = max(known, self._reserved) + 1
        self._reserved = self.next_seq - 1
        # This run's split (see the module docstring).
        self.run_first_seq = self.next_seq
        self.run_shipped_batches = self.run_shipped_packets = 0
        self.run_lost_batches = self.run_lost_packets = 0
        #: Highest sequence handed to the producer and not known to have failed.
        self.in_flight_to = 0
        self._limbo: dict[int, Entry] = {}  # recycled while in flight: delivered or lost?
        # Memory first while a shipper is connected (see the module docstring).
        self.hold_bytes, self.hold_for = hold_bytes, hold_for
        self.holding = False
        self._held: OrderedDict[int, Held] = OrderedDict()
        self.held_bytes = 0
        self._clock = clock
        self._file: SegmentFile | None = None  # the segment being written
        self._syncs: list[threading.Thread] = []
        self._state_at = 0.0
        self._state_seq = self.acked_seq
        self._cur: Segment | None = None
        self._fds: dict[Path, int] = {}
        # The newest batches written through to disk: a shipper that keeps up sends these
        # without reading the segment back (saves a copy and a syscall per batch).
        self._recent: dict[int, tuple[Piece, ...]] = {}

    # --- start-up ---------------------------------------------------------------------

    def _load_state(self) -> None:
        doc = read_state(self.dir)
        self.acked_seq = doc.get("acked_seq", 0)
        self.lost_batches = doc.get("lost_batches", 0)
        self.lost_packets = doc.get("lost_packets", 0)
        self.lost_bytes = doc.get("lost_bytes", 0)
        self._reserved = doc.get("reserved_seq", 0)

    def _scan(self) -> None:
        for path in segment_paths(self.dir):
            entries, end = scan_segment(path)
            if end == 0:
                path.unlink()
                continue
            self.segments.append(Segment(path, end, [
                Entry(e.seq, e.offset, e.length, e.packets, e.raw_bytes, e.first_ns) for e in entries]))

    # --- writing ----------------------------------------------------------------------

    @property
    @_locked
    def total_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @_locked
    def append(self, batch: ClosedBatch) -> None:
        """Take one batch (its ``seq`` must be ``next_seq``): held in memory while a shipper
        is connected and memory has room, else written to disk (older held batches first)."""
        if batch.seq != self.next_seq:
            raise RawcapError(f"FIFO expected batch {self.next_seq}, got {batch.seq}")
        self.next_seq += 1
        entry = Entry(batch.seq, 0, batch.size, batch.count, batch.raw_bytes, batch.first_ns)
        if self._may_hold(batch.seq):
            self._held[batch.seq] = Held(entry, batch.parts, self._clock())
            self.held_bytes += entry.length
            self.spill()
        else:
            self.spill(everything=True)
            self._write(entry, batch.parts)
        self.batches_written += 1
        if self.on_append:
            self.on_append()

    def _may_hold(self, seq: int) -> bool:
        if not (self.holding and self.hold_bytes > 0):
            return False
        if seq > self._reserved:
            # Reserve ahead before memory uses the number: a crash then skips past it.
            self.write_state()
        return seq <= self._reserved

    @_locked
    def spill(self, *, everything: bool = False) -> None:
        """Write held batches to disk, oldest first: all of them, or those older than
        ``hold_for`` and those over ``hold_bytes``. The ring thread calls this on every
        wake-up, so a batch waits at most ``hold_for`` plus one ring timeout."""
        if not self._held:
            return
        everything = everything or not self.holding
        deadline = self._clock() - self.hold_for
        while self._held:
            seq, held = next(iter(self._held.items()))
            if not (everything or held.since <= deadline or self.held_bytes > self.hold_bytes):
                break
            del self._held[seq]
            self.held_bytes -= held.entry.length
            self._write(held.entry, held.parts)

    def _write(self, entry: Entry, parts: tuple[Piece, ...]) -> None:
        """Append one frame to the current segment, recycling old segments first."""
        size = entry.length
        need = 8 + size
        crc = 0
        for p in parts:
            crc = crc32(p, crc)
        while True:
            try:
                if self._cur is None or (self._cur.size + need > self.segment_size
                                         and self._cur.entries):
                    self._roll(entry.seq)
                assert self._cur is not None and self._file is not None
                while self.total_bytes + need > self.budget and len(self.segments) > 1:
                    self._recycle_oldest()
                offset = self._file.append(parts, size, crc)
                break
            except OSError as exc:
                if exc.errno not in _DISK_FULL:
                    raise
                # The disk filled up before the budget did: act as if the budget were
                # reached (recycle the oldest segment, counting what it loses), and when
                # nothing is left to recycle, count this batch lost. Never silent.
                if not self._undo_partial_write_and_recycle():
                    self._lose(entry, exc)
                    return
        assert self._cur is not None and self._file is not None
        entry.offset = offset
        self._cur.size = self._file.size
        self._cur.entries.append(entry)
        self._recent[entry.seq] = parts
        self._recent.pop(entry.seq - _RECENT, None)

    def _undo_partial_write_and_recycle(self) -> bool:
        """After ENOSPC: cut the current segment back to its last whole frame (a short
        ``writev`` may have left part of one), then free the oldest other segment. False
        when there is no other segment to free."""
        if self._file is not None:
            self._file.undo_partial()
        if len(self.segments) <= 1:
            return False
        self._recycle_oldest()
        return True

    def _count_lost(self, entries: list[Entry]) -> None:
        self.lost_batches += len(entries)
        self.lost_packets += sum(e.count for e in entries)
        self.lost_bytes += sum(e.raw_bytes for e in entries)
        mine = [e for e in entries if e.seq >= self.run_first_seq]
        self.run_lost_batches += len(mine)
        self.run_lost_packets += sum(e.count for e in mine)

    def _lose(self, entry: Entry, exc: OSError) -> None:
        """A batch the full disk cannot take: its sequence number is used up (consumers see
        the gap) and it is counted and logged like a recycled one."""
        self._count_lost([entry])
        now = time.monotonic()
        if now - self._full_logged >= 10.0:
            self._full_logged = now
            log.warning("buffer disk full (%s): batches are lost until space frees up; "
                        "%d lost so far", exc.strerror, self.lost_batches,
                        extra={"dir": str(self.dir), "seq": entry.seq, "lost_batches": self.lost_batches,
                               "lost_packets": self.lost_packets})
        self.write_state()

    def _roll(self, first_seq: int) -> None:
        self._close_current()
        self._cur = None  # until the new segment exists (a full disk can refuse it)
        self._file = SegmentFile(self.dir / segment_name(first_seq))
        self._cur = Segment(self._file.path, self._file.size)
        self.segments.append(self._cur)

    def _close_current(self, *, wait: bool = False) -> None:
        """Close the segment being written; its fsync runs in a thread the FIFO owns (joined
        by :meth:`close`) unless ``wait``."""
        if self._file is not None:
            file, self._file = self._file, None
            t = file.close(wait=wait)
            if t is not None:
                self._syncs = [x for x in self._syncs if x.is_alive()]
                self._syncs.append(t)

    def _recycle_oldest(self) -> None:
        seg = self.segments.pop(0)
        unshipped = [e for e in seg.entries if e.seq > self.acked_seq]
        fd = self._fds.pop(seg.path, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        # In a send right now: its fate is the send's (mark_acked / abandon_in_flight).
        for e in unshipped:
            if e.seq <= self.in_flight_to:
                self._limbo[e.seq] = e
        unshipped = [e for e in unshipped if e.seq > self.in_flight_to]
        if unshipped:
            packets = sum(e.count for e in unshipped)
            raw = sum(e.raw_bytes for e in unshipped)
            self._count_lost(unshipped)
            log.warning(
                "buffer full: recycled %d unshipped batches (%d packets) before Kafka took them",
                len(unshipped), packets,
                extra={"segment": seg.path.name, "lost_batches": len(unshipped),
                       "lost_packets": packets, "lost_bytes": raw,
                       "first_seq": unshipped[0].seq, "last_seq": unshipped[-1].seq},
            )
            self.write_state()

    # --- reading (shipper) ------------------------------------------------------------

    @property
    @_locked
    def first_seq(self) -> int:
        """Oldest sequence still held, on disk or in memory (``next_seq`` when empty)."""
        for seg in self.segments:
            if seg.entries:
                return seg.entries[0].seq
        return next(iter(self._held), self.next_seq)

    @_locked
    def locate(self, seq: int) -> tuple[Segment | None, Entry] | None:
        """Where batch ``seq`` is: its segment (None while it is in memory) and entry."""
        held = self._held.get(seq)
        if held is not None:
            return None, held.entry
        for seg in reversed(self.segments):
            if seg.entries and seg.entries[0].seq <= seq:
                entry = seg.find(seq)
                return None if entry is None else (seg, entry)
        return None

    @_locked
    def read(self, seq: int) -> tuple[Entry, tuple[Piece, ...]] | None:
        """The wire bytes of batch ``seq`` (in pieces: join them for one ``bytes``), or None
        if it was recycled, lost or never written."""
        held = self._held.get(seq)
        if held is not None:
            return held.entry, held.parts
        found = self.locate(seq)
        if found is None:
            return None
        seg, entry = found
        assert seg is not None
        cached = self._recent.get(seq)
        if cached is not None:
            return entry, cached
        fd = self._fds.get(seg.path)
        if fd is None:
            try:
                fd = os.open(seg.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            self._fds[seg.path] = fd
        return entry, (os.pread(fd, entry.length, entry.offset),)

    @_locked
    def mark_acked(self, seq: int) -> None:
        """Record Kafka's acknowledgement of everything up to ``seq`` (in order). The state
        file follows within ``STATE_EVERY_S`` / ``STATE_EVERY_BATCHES`` (see above)."""
        if seq > self.acked_seq:
            self._count_delivered(self.acked_seq, seq)
            self.acked_seq = seq
            while self._held and next(iter(self._held)) <= seq:
                _, held = self._held.popitem(last=False)
                self.held_bytes -= held.entry.length
            if (seq - self._state_seq >= STATE_EVERY_BATCHES
                    or time.monotonic() - self._state_at >= STATE_EVERY_S):
                self.write_state()

    def _count_delivered(self, after: int, upto: int) -> None:
        """Kafka acknowledged batches ``after+1 .. upto``: every one of this run still held,
        on disk or in limbo was in the acknowledged sends (the shipper sends in order and
        skips only batches already recycled, which were counted lost then)."""
        for seq in range(max(after + 1, self.run_first_seq), upto + 1):
            held = self._held.get(seq)
            entry = held.entry if held is not None else self._limbo.pop(seq, None)
            if entry is None:
                found = self.locate(seq)
                entry = found[1] if found is not None else None
            if entry is not None:
                self.run_shipped_batches += 1
                self.run_shipped_packets += entry.count
        for seq in [q for q in self._limbo if q <= upto]:  # earlier runs' batches
            del self._limbo[seq]

    @_locked
    def abandon_in_flight(self) -> None:
        """The sends in flight failed (the shipper reconnected and skipped what Kafka already
        holds, or it stopped): batches recycled while in them are lost after all."""
        lost = sorted((e for q, e in self._limbo.items() if q > self.acked_seq), key=lambda e: e.seq)
        self._limbo.clear()
        self.in_flight_to = self.acked_seq
        if lost:
            self._count_lost(lost)
            log.warning("buffer full: %d batches (%d packets) recycled while a failed send carried "
                        "them are lost", len(lost), sum(e.count for e in lost),
                        extra={"first_seq": lost[0].seq, "last_seq": lost[-1].seq})
            self.write_state()

    @_locked
    def run_pending(self) -> tuple[int, int]:
        """(batches, packets) of this run that Kafka has not acknowledged and that are not
        lost: in memory, on disk, or in a send whose outcome is not known yet."""
        first = max(self.acked_seq + 1, self.run_first_seq)
        entries = [h.entry for q, h in self._held.items() if q >= first]
        entries += [e for seg in self.segments for e in seg.entries if e.seq >= first]
        entries += [e for q, e in self._limbo.items() if q >= first]
        return len(entries), sum(e.count for e in entries)

    @_locked
    def sync_state(self) -> None:
        """Write ``shipped.json`` if acknowledgements arrived since the last write (the
        agent calls this every second)."""
        if self._state_seq != self.acked_seq:
            self.write_state()

    @_locked
    def write_state(self) -> None:
        """Atomically replace ``shipped.json`` (rename over the old one). On a full disk
        the old file stays and the counters live on in memory (and the metrics) until a
        later write gets through; a crash meanwhile resends at most what Kafka already
        has, which the shipper skips (``_skip_already_in_kafka``)."""
        reserved = self.next_seq - 1 + (RESERVE if self.holding and self.hold_bytes else 0)
        doc = {"node": self.node, "acked_seq": self.acked_seq, "next_seq": self.next_seq,
               "reserved_seq": reserved,
               "lost_batches": self.lost_batches, "lost_packets": self.lost_packets,
               "lost_bytes": self.lost_bytes}
        if not write_state(self.dir, doc, full_errnos=_DISK_FULL):
            return
        self._state_at, self._state_seq = time.monotonic(), self.acked_seq
        self._reserved = reserved

    @_locked
    def close(self) -> None:
        """Spill what memory still holds, close the segment, write the exact state."""
        self.holding = False
        self.spill(everything=True)
        for t in self._syncs:
            t.join(30)
        self._syncs.clear()
        self._close_current(wait=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.write_state()
        os.close(self._lockfd)
