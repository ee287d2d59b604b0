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


# --- fast construction for the parser ------------------------------------------------------
# A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; the parser
# builds four of these per call and has already validated what ``__post_init__`` checks, so
# it fills the slots directly (same objects: equal, hashable, immutable to everyone else).
_new = object.__new__
_REQ = tuple(Request.__dict__[f].__set__ for f in Request.__slots__)
_RESP = tuple(Response.__dict__[f].__set__ for f in Response.__slots__)
_EOM = tuple(EndOfMessage.__dict__[f].__set__ for f in EndOfMessage.__slots__)


def new_request(method: str, target: str, version: str, headers: tuple[tuple[str, str], ...],
                ts_ns: int, head_bytes: int) -> Request:
    o = _new(Request)
    a, b, c, d, e, f = _REQ
    a(o, method)
    b(o, target)
    c(o, version)
    d(o, headers)
    e(o, ts_ns)
    f(o, head_bytes)
    return o


def new_response(status: int, reason: str, version: str, headers: tuple[tuple[str, str], ...],
                 ts_ns: int, head_bytes: int) -> Response:
    o = _new(Response)
    a, b, c, d, e, f = _RESP
    a(o, status)
    b(o, reason)
    c(o, version)
    d(o, headers)
    e(o, ts_ns)
    f(o, head_bytes)
    return o


def new_end(body_bytes: int, body: bytes, body_truncated: bool, ts_ns: int) -> EndOfMessage:
    o = _new(EndOfMessage)
    a, b, c, d = _EOM
    a(o, body_bytes)
    b(o, body)
    c(o, body_truncated)
    d(o, ts_ns)
    return o
