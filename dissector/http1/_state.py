"""HTTP/1.x per-direction state machine: every transition in one table.

The parser asks ``step(state, what)`` for the next state; a pair missing from the table is
a bug in the parser (not a peer error), so it raises ``KeyError`` loudly in tests.
"""

from __future__ import annotations

import enum

__all__ = ("TRANSITIONS", "State", "step")


class State(enum.Enum):
    IDLE = "idle"              # expecting a start line
    BODY_LENGTH = "length"     # Content-Length body
    CHUNK_SIZE = "chunk-size"  # chunked: size line
    CHUNK_DATA = "chunk-data"  # chunked: data + CRLF
    TRAILERS = "trailers"      # chunked: trailer section
    BODY_EOF = "eof-body"      # body delimited by connection close
    SWITCHED = "switched"      # after 101 / CONNECT: opaque bytes, ignored
    RESYNC = "resync"          # lost bytes: scanning for the next start line
    ERROR = "error"            # malformed: this flow is poisoned

    # Members are singletons: identity hashing is correct and, unlike ``Enum.__hash__``
    # (Python code hashing the name), costs nothing per transition lookup.
    __hash__ = object.__hash__


S = State
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.IDLE, "head-no-body"): S.IDLE,
    (S.IDLE, "head-length"): S.BODY_LENGTH,
    (S.IDLE, "head-chunked"): S.CHUNK_SIZE,
    (S.IDLE, "head-eof"): S.BODY_EOF,
    (S.IDLE, "switch"): S.SWITCHED,
    (S.BODY_LENGTH, "body-done"): S.IDLE,
    (S.CHUNK_SIZE, "chunk"): S.CHUNK_DATA,
    (S.CHUNK_SIZE, "last-chunk"): S.TRAILERS,
    (S.CHUNK_DATA, "chunk-done"): S.CHUNK_SIZE,
    (S.TRAILERS, "trailers-done"): S.IDLE,
    (S.BODY_EOF, "eof"): S.IDLE,
    (S.RESYNC, "found"): S.IDLE,
}
# Any state may lose bytes or meet garbage.
for _s in S:
    TRANSITIONS[(_s, "gap")] = S.SWITCHED if _s is S.SWITCHED else S.RESYNC
    TRANSITIONS[(_s, "malformed")] = S.ERROR
TRANSITIONS[(S.BODY_LENGTH, "gap-in-body")] = S.BODY_LENGTH
TRANSITIONS[(S.BODY_EOF, "gap-in-body")] = S.BODY_EOF


def step(state: State, what: str) -> State:
    return TRANSITIONS[(state, what)]
