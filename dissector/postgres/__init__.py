"""PostgreSQL v3 wire protocol: simple and extended queries paired with their results."""

from ._events import (
    CommandComplete,
    CopyIn,
    EmptyQuery,
    ErrorResponse,
    PortalSuspended,
    Query,
    ReadyForQuery,
    SslRequest,
    Startup,
    Sync,
)
from ._pairing import StatementPairer
from ._parser import PgReader, looks_like_startup
from ._sql import first_keyword, statement_spans
from ._state import State

__all__ = ("CommandComplete", "CopyIn", "EmptyQuery", "ErrorResponse", "PgReader",
           "PortalSuspended", "Query", "ReadyForQuery", "SslRequest", "Startup", "State",
           "StatementPairer", "Sync", "first_keyword", "looks_like_startup", "statement_spans")
