"""Batch streams: many batches in one file or object (node FIFO segments, archive objects,
snapshot objects).

Layout: an 8-byte file header ``RCSG`` + version (u8) + 3 reserved bytes, then frames of
``u32 length | u32 crc32(value) | value`` (little-endian), where each value is one batch
exactly as it travels on ``rawcap.packets``. No re-encoding: the bytes archived are the
bytes shipped. The splitter is sans-I/O: give it bytes, get whole frames and the count of
bytes consumed; the caller keeps the tail.
"""

from __future__ import annotations

import ctypes
import struct
import zlib
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .errors import BadMagic, CorruptBody, TruncatedBatch, UnsupportedVersion

__all__ = (
    "FRAME",
    "STREAM_HEADER",
    "STREAM_MAGIC",
    "Frame",
    "crc32",
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


class _Buffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable since 3.3): how any buffer, read-only ones included
    (a memoryview of ``bytes``: every value the Kafka fetch client hands out), lends its
    address without a copy."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _libdeflate_crc32() -> Callable[..., int] | None:
    """libdeflate's crc32 (PCLMUL: 4x zlib 1.2's on these machines, and it releases the GIL),
    or None where the library is missing."""
    try:
        lib = ctypes.CDLL("libdeflate.so.0")
    except OSError:
        from ctypes.util import find_library  # runs ldconfig: only when the soname is unknown

        name = find_library("deflate")
        if not name:
            return None
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            return None
    fn = lib.libdeflate_crc32
    fn.restype, fn.argtypes = ctypes.c_uint32, (ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
    get, release = ctypes.pythonapi.PyObject_GetBuffer, ctypes.pythonapi.PyBuffer_Release
    get.argtypes, get.restype = (ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int), ctypes.c_int
    release.argtypes, release.restype = (ctypes.POINTER(_Buffer),), None

    def crc(data: Any, value: int = 0) -> int:
        if isinstance(data, bytes):
            return int(fn(value, data, len(data)))
        view = _Buffer()
        try:
            get(data, ctypes.byref(view), 0)  # PyBUF_SIMPLE: C-contiguous bytes only
        except BufferError:
            return zlib.crc32(data, value)
        try:
            return int(fn(value, view.buf, view.len))
        finally:
            release(ctypes.byref(view))

    ok = b"123456789"
    if crc(ok) == crc(memoryview(ok)[:]) == crc(bytearray(ok)) == zlib.crc32(ok) == 0xCBF43926:
        return crc
    return None


_crc32: Callable[..., int] | None = None


def crc32(data: Any, value: int = 0) -> int:
    """The frame checksum: CRC-32 with zlib's polynomial, chainable over pieces like
    ``zlib.crc32``, of any C-contiguous buffer (bytes, bytearray, memoryview). libdeflate's
    where it is installed (resolved on the first call), else zlib's; the same result."""
    global _crc32
    if _crc32 is None:
        _crc32 = _libdeflate_crc32() or zlib.crc32
    return _crc32(data, value)


def stream_header() -> bytes:
    return STREAM_HEADER.pack(STREAM_MAGIC, STREAM_VERSION)


def frame_batch(value: bytes | memoryview) -> bytes:
    """Frame header for one batch; write it, then the value itself."""
    return FRAME.pack(len(value), crc32(value))


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
        if crc32(value) != crc:
            raise CorruptBody(f"{name}: frame at offset {pos} fails its crc32 check")
        frames.append(Frame(pos, value))
        pos += FRAME.size + length
    if final and pos != end:
        raise TruncatedBatch(f"{name}: ends inside a frame at offset {pos} ({end - pos} bytes)")
    return frames, pos
