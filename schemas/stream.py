"""Batch streams: many batches in one file or object (node FIFO segments, archive objects,
snapshot objects).

Layout: an 8-byte file header ``RCSG`` + version (u8) + 3 reserved bytes, then frames of
``u32 length | u32 crc32(value) | value`` (little-endian), where each value is one batch
exactly as it travels on ``rawcap.packets``. No re-encoding: the bytes archived are the
bytes shipped. The splitter is sans-I/O: give it bytes, get whole frames and the count of
bytes consumed; the caller keeps the tail.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

from .errors import BadMagic, CorruptBody, TruncatedBatch, UnsupportedVersion

__all__ = (
    "FRAME",
    "STREAM_HEADER",
    "STREAM_MAGIC",
    "Frame",
    "frame_batch",
    "split_frames",
    "stream_header",
)

STREAM_MAGIC: Final = b"RCSG"
STREAM_VERSION: Final = 1
STREAM_HEADER: Final = struct.Struct("<4sB3x")
FRAME: Final = struct.Struct("<II")
#: A frame larger than this is corruption, not data (batches are at most a few MiB).
MAX_FRAME: Final = 64 * 1024 * 1024


class Frame(NamedTuple):
    offset: int  # where the frame starts in the stream (header included)
    value: memoryview


def stream_header() -> bytes:
    return STREAM_HEADER.pack(STREAM_MAGIC, STREAM_VERSION)


def frame_batch(value: bytes | memoryview) -> bytes:
    """Frame header for one batch; write it, then the value itself."""
    return FRAME.pack(len(value), zlib.crc32(value))


def split_frames(
    data: bytes | memoryview, *, start: int = 0, final: bool = True, name: str = "stream"
) -> tuple[list[Frame], int]:
    """Split ``data`` (a whole stream, or a prefix of one) into frames.

    Returns the frames and the offset just past the last whole frame. With ``final=True``
    a partial frame at the end is an error (a truncated file); with ``final=False`` it is
    left for the next call (a segment still being written). ``start`` skips bytes already
    consumed; at ``start == 0`` the stream header is checked.
    """
    view = memoryview(data)
    pos = start
    if pos == 0:
        if len(view) < STREAM_HEADER.size:
            if final:
                raise TruncatedBatch(f"{name}: {len(view)} bytes, shorter than its header")
            return [], 0
        magic, version = STREAM_HEADER.unpack_from(view, 0)
        if magic != STREAM_MAGIC:
            raise BadMagic(f"{name}: not a rawcap batch stream (starts with {bytes(magic)!r})")
        if version != STREAM_VERSION:
            raise UnsupportedVersion(f"{name}: batch stream version {version} is not supported")
        pos = STREAM_HEADER.size
    frames: list[Frame] = []
    end = len(view)
    while pos + FRAME.size <= end:
        length, crc = FRAME.unpack_from(view, pos)
        if length > MAX_FRAME:
            raise CorruptBody(f"{name}: frame at offset {pos} claims {length} bytes")
        if pos + FRAME.size + length > end:
            break
        value = view[pos + FRAME.size : pos + FRAME.size + length]
        if zlib.crc32(value) != crc:
            raise CorruptBody(f"{name}: frame at offset {pos} fails its crc32 check")
        frames.append(Frame(pos, value))
        pos += FRAME.size + length
    if final and pos != end:
        raise TruncatedBatch(f"{name}: ends inside a frame at offset {pos} ({end - pos} bytes)")
    return frames, pos
