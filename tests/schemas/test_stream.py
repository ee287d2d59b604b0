from __future__ import annotations

import ctypes
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import BadMagic, CorruptBody, TruncatedBatch, stream
from schemas.stream import crc32, frame_batch, split_frames, stream_header


def _stream(values: list[bytes]) -> bytes:
    return stream_header() + b"".join(frame_batch(v) + v for v in values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=10), st.data())
def test_split_anywhere_then_resume(values: list[bytes], data: st.DataObject) -> None:
    blob = _stream(values)
    cut = data.draw(st.integers(0, len(blob)))
    first, consumed = split_frames(blob[:cut], final=False)
    rest, end = split_frames(blob, start=consumed) if consumed else split_frames(blob)
    assert [bytes(f.value) for f in first + rest] == values
    assert end == len(blob)


def test_truncated_file_is_an_error_when_final() -> None:
    blob = _stream([b"abc", b"defgh"])
    with pytest.raises(TruncatedBatch, match="ends inside a frame"):
        split_frames(blob[:-2], name="seg.rcsg")


def test_flipped_byte_fails_crc() -> None:
    blob = bytearray(_stream([b"abcdef"]))
    blob[-1] ^= 1
    with pytest.raises(CorruptBody, match="crc32"):
        split_frames(bytes(blob))


def test_not_a_stream() -> None:
    with pytest.raises(BadMagic):
        split_frames(b"PK\x03\x04" + b"\0" * 20)


@given(st.binary(max_size=5000), st.integers(0, 64), st.integers(0, 2**32 - 1))
def test_crc32_is_zlibs_on_every_buffer_kind(data: bytes, cut: int, seed: int) -> None:
    """Bytes, read-only memoryview slices (what the fetch client hands out), bytearrays and
    chained pieces all give zlib's CRC-32, whichever implementation is loaded."""
    view = memoryview(data)[min(cut, len(data)) :]
    want = zlib.crc32(view, seed)
    assert crc32(bytes(view), seed) == crc32(view, seed) == crc32(bytearray(view), seed) == want
    assert crc32(view[len(view) // 2 :], crc32(view[: len(view) // 2], seed)) == want


def test_crc32_check_value_and_non_contiguous_buffers() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # CRC-32/ISO-HDLC check value
    with pytest.raises((BufferError, ValueError)):
        crc32(memoryview(b"abcdef")[::2])  # like zlib.crc32: contiguous buffers only


def test_crc32_uses_libdeflate_where_installed() -> None:
    """setup installs libdeflate (4x zlib 1.2 here): a loader that silently fell back to zlib
    would cost the archiver and the FIFO that much CPU."""
    try:
        ctypes.CDLL("libdeflate.so.0")
    except OSError:
        pytest.fail("libdeflate.so.0 is missing: scripts/setup.sh installs libdeflate0")
    crc32(b"")
    assert stream._crc32 is not zlib.crc32
