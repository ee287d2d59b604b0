"""PostgreSQL wire protocol (v3) events, both directions."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("CommandComplete", "ErrorResponse", "Query", "ReadyForQuery", "RowData",
           "SslRequest", "Startup", "Sync")


@dataclass(frozen=True, slots=True)
class Startup:
    user: str
    database: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class SslRequest:
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Sync:
    """End of an extended-protocol batch (the server answers it with ReadyForQuery)."""

    ts_ns: int


@dataclass(frozen=True, slots=True)
class Query:
    """A statement run: simple (``Q``) or an Execute of the extended protocol (its SQL from
    the Parse of the statement its portal was bound to)."""

    sql: str
    extended: bool
    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    code: str  # SQLSTATE
    message: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class RowData:
    size: int


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # I idle, T in transaction, E failed transaction
    ts_ns: int
