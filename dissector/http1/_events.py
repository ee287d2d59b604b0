"""HTTP/1.x events: frozen, slotted, validated where it is cheap."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("EndOfMessage", "Request", "Response", "Resync")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    ts_ns: int
    head_bytes: int

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("empty method")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    version: str
    headers: tuple[tuple[str, str], ...]
    ts_ns: int
    head_bytes: int

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 999:
            raise ValueError(f"status {self.status} out of range")


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The message body ended; ``body`` holds at most ``maxBodyBytes`` of it."""

    body_bytes: int
    body: bytes
    body_truncated: bool
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Bytes were lost; the message in flight (if any) is gone, parsing restarts at the next
    start line."""

    ts_ns: int
    lost_message: bool
