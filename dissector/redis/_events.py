"""Redis RESP events: one complete value (a command from the client, a reply from the server)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Command", "Reply")


@dataclass(frozen=True, slots=True)
class Command:
    name: str            # upper-cased first element (GET, SET, ...)
    args: int            # number of arguments after the name
    key: str             # first argument (truncated), "" if none
    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Reply:
    kind: str            # "+", "-", ":", "$", "*", ... (RESP type byte)
    error: str           # error text for "-" replies, else ""
    size: int
    ts_ns: int
