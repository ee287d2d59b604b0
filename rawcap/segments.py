"""The node FIFO buffer on disk: segment files and the shipping state, writer and reader.

Layout (``docs/capture.md``)::

    <bufferDir>/<node>/
        00000000000000000001.rcsg   segment: first batch sequence as 20 digits, then
        00000000000000000042.rcsg   a batch stream (schemas.stream), one batch per frame
        shipped.json                {"node", "acked_seq", "next_seq", "reserved_seq", "lost_*"},
                                    replaced atomically
        .lock                       flock held by the running agent

The capture agent writes it (``capture/_fifo.py`` decides what goes where and when a segment
is recycled, with :class:`SegmentFile`, :func:`scan_segment` and :func:`write_state` from
here); ``rawcap pcap export --source local`` reads it (:func:`read_segment`) without
importing the agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from io import BufferedWriter
from pathlib import Path
from typing import Any, NamedTuple

from schemas import decode_header
from schemas.errors import BatchError
from schemas.stream import FRAME, STREAM_HEADER, split_frames, stream_header

__all__ = (
    "LOCK_FILE",
    "SEGMENT_SUFFIX",
    "STATE_FILE",
    "WRITE_CHUNK",
    "SegmentEntry",
    "SegmentFile",
    "read_segment",
    "read_state",
    "scan_segment",
    "segment_name",
    "segment_paths",
    "write_state",
)

log = logging.getLogger("rawcap.segments")

SEGMENT_SUFFIX = ".rcsg"
STATE_FILE = "shipped.json"
LOCK_FILE = ".lock"
#: Largest single write(2). ext4 sizes page-cache folios by the write: a large write gets
#: large folios, which on some VMs come from memory the guest never touched and cost far
#: more to fill (docs/capture.md); elsewhere small writes cost nothing extra.
WRITE_CHUNK = 256 * 1024


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def segment_paths(node_dir: Path) -> list[Path]:
    """The node's segments, oldest first."""
    return sorted(node_dir.glob("*" + SEGMENT_SUFFIX))




class SegmentEntry(NamedTuple):
    """One frame found in a segment: where its value starts, its length and its header."""

    offset: int  # of the value (the frame header is the 8 bytes before it)
    length: int
    seq: int
    packets: int
    raw_bytes: int
    first_ns: int


def scan_segment(path: Path) -> tuple[list[SegmentEntry], int]:
    """The batches of a segment left by an earlier agent and the size it keeps: a crash may
    have left half a frame at the end, which is cut off here so that appends stay readable
    (a damaged segment keeps its readable prefix; 0: nothing to keep, delete it)."""
    data = path.read_bytes()
    try:
        frames, end = split_frames(data, final=False, name=str(path))
    except BatchError as exc:
        log.warning("segment %s is damaged (%s); keeping its readable prefix", path, exc)
        frames, end = [], STREAM_HEADER.size if len(data) >= STREAM_HEADER.size else 0
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
    entries = []
    for fr in frames:
        try:
            header, _ = decode_header(fr.value)
        except BatchError:
            continue
        entries.append(SegmentEntry(fr.offset + FRAME.size, len(fr.value), header.seq, header.count,
                                    header.body_len, header.first_ns))
    return entries, end


def read_segment(path: Path, *, last: bool) -> list[tuple[memoryview, int]]:
    """``(value, frame offset)`` of every whole frame of a segment (the newest one, ``last``,
    may be being written: a partial frame at its end is left out quietly). A segment that
    is damaged, or recycled while being read, gives nothing (logged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.warning("buffer segment recycled while reading", extra={"segment": str(path)})
        return []
    try:
        frames, used = split_frames(data, final=False, name=str(path))
    except BatchError as exc:
        log.warning("corrupt buffer segment skipped: %s", exc)
        return []
    if used != len(data) and not last:
        log.warning("buffer segment ends inside a frame", extra={"segment": str(path)})
    return [(f.value, f.offset) for f in frames]


def _write_pieces(fd: int, pieces: list[Any]) -> None:
    done = os.writev(fd, pieces)
    for p in pieces:
        if done >= len(p):
            done -= len(p)
            continue
        view = memoryview(p)[done:]
        while view:
            view = view[os.write(fd, view):]
        done = 0


def _sync_close(fh: BufferedWriter) -> None:
    """fsync and close a finished segment."""
    try:
        os.fsync(fh.fileno())
    except OSError as exc:
        log.warning("fsync of %s failed: %s", fh.name, exc)
    finally:
        fh.close()


class SegmentFile:
    """One segment being written: the stream header on creation, then frames appended.
    A write error leaves the file as it was before the frame (:meth:`undo_partial`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fh = open(path, "wb")
        try:
            fh.write(stream_header())
            fh.flush()
        except OSError:
            with contextlib.suppress(OSError):
                fh.close()
            path.unlink(missing_ok=True)
            raise
        self._fh: BufferedWriter | None = fh
        self.size = STREAM_HEADER.size

    def append(self, parts: tuple[Any, ...] | list[Any], length: int, crc: int) -> int:
        """Write one frame (``parts`` are the value in pieces, ``length`` bytes with crc32
        ``crc``), at most ``WRITE_CHUNK`` per system call; returns the value's offset. A
        short write (disk full, a signal) is finished, or raises ``OSError`` like ``write``."""
        assert self._fh is not None
        fd = self._fh.fileno()
        small: list[Any] = [FRAME.pack(length, crc)]  # the headers go out with what follows
        queued = FRAME.size
        for p in parts:
            if len(p) < WRITE_CHUNK and queued + len(p) <= WRITE_CHUNK:
                small.append(p)
                queued += len(p)
                continue
            if small:
                _write_pieces(fd, small)
                small, queued = [], 0
            view = memoryview(p)
            for off in range(0, len(view), WRITE_CHUNK):
                _write_pieces(fd, [view[off:off + WRITE_CHUNK]])
        if small:
            _write_pieces(fd, small)
        offset = self.size + FRAME.size
        self.size += FRAME.size + length
        return offset

    def undo_partial(self) -> None:
        """Cut the file back to its last whole frame (after a failed :meth:`append`)."""
        if self._fh is not None:
            fd = self._fh.fileno()
            os.ftruncate(fd, self.size)
            os.lseek(fd, self.size, os.SEEK_SET)

    def close(self, *, wait: bool = True) -> threading.Thread | None:
        """Flush, fsync and close; ``wait=False``: fsync and close in a thread, returned for
        its owner to join (an fsync can take long enough to stall a writer in a hurry)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return None
        fh.flush()
        if wait:
            _sync_close(fh)
            return None
        t = threading.Thread(target=_sync_close, args=(fh,), name="rawcap-fifo-fsync", daemon=True)
        t.start()
        return t


def read_state(node_dir: Path) -> dict[str, int]:
    """``shipped.json``'s counters (empty when there is none; an unreadable one is logged)."""
    path = node_dir / STATE_FILE
    try:
        doc = json.loads(path.read_text())
        return {k: int(doc.get(k, 0)) for k in
                ("acked_seq", "reserved_seq", "lost_batches", "lost_packets", "lost_bytes")}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}


def write_state(node_dir: Path, doc: dict[str, Any], *, full_errnos: tuple[int, ...] = ()) -> bool:
    """Replace ``shipped.json`` atomically (rename over the old one). False when the disk is
    full (an errno of ``full_errnos``): the old file stays; any other error raises."""
    tmp = node_dir / (STATE_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, node_dir / STATE_FILE)
    except OSError as exc:
        if exc.errno not in full_errnos:
            raise
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
