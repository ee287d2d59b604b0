"""HTTP/2 events (per direction): header blocks, data, stream resets, goaway."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Frame", "GoAway", "Headers", "StreamData", "StreamReset")


@dataclass(frozen=True, slots=True)
class Frame:
    """One raw frame as split off the wire (payload still padded/unparsed)."""

    length: int
    type: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Headers:
    stream_id: int
    headers: tuple[tuple[str, str], ...]
    end_stream: bool
    ts_ns: int
    size: int

    def __post_init__(self) -> None:
        if self.stream_id <= 0:
            raise ValueError("HEADERS on stream 0")


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    length: int
    end_stream: bool
    ts_ns: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_stream_id: int
    error_code: int
    ts_ns: int
