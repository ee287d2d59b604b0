from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import BadMagic, CorruptBody, TruncatedBatch
from schemas.stream import frame_batch, split_frames, stream_header


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
