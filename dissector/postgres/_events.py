"""PostgreSQL wire protocol (v3) events, both directions.

Sizes are whole messages (type byte + length field + payload). A server event that ends a
statement's result (``CommandComplete``, ``ErrorResponse``, ``EmptyQuery``,
``PortalSuspended``) or a batch (``ReadyForQuery``) carries ``size``: the bytes of every
server message since the previous such event, itself included, so the sizes of consecutive
events add up to the bytes the server sent (login messages land in the first
``ReadyForQuery``). ``rows`` counts the DataRow messages in the same span.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("CommandComplete", "CopyIn", "EmptyQuery", "ErrorResponse", "PortalSuspended",
           "Query", "ReadyForQuery", "SslRequest", "Startup", "Sync")


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
    """A statement run: simple (``Q``, its SQL may hold several statements) or an Execute of
    the extended protocol (its SQL from the Parse of the statement its portal was bound to).
    ``size``: the ``Q`` message, or the Parse/Bind/Describe/Close/Flush/Execute messages
    since the previous Execute or Sync, this Execute included."""

    sql: str
    extended: bool
    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class CopyIn:
    """The client finished streaming COPY ... FROM STDIN data (CopyDone or CopyFail);
    ``size``: its CopyData messages and the closing one."""

    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str
    rows: int
    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    code: str  # SQLSTATE
    message: str
    position: int  # 1-based character offset into the statement's SQL ('P' field), 0: none
    rows: int
    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class EmptyQuery:
    """The server's answer to a Query (or Execute) holding no statement."""

    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    """An Execute stopped at its row limit; the portal can be executed again."""

    rows: int
    size: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # I idle, T in transaction, E failed transaction
    size: int
    ts_ns: int
