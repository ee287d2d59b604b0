"""PostgreSQL v3 wire protocol: simple and extended queries paired with their results."""

from ._events import (
    CommandComplete,
    ErrorResponse,
    Query,
    ReadyForQuery,
    RowData,
    SslRequest,
    Startup,
    Sync,
)
from ._parser import PgReader, looks_like_startup
from ._state import State

__all__ = ("CommandComplete", "ErrorResponse", "PgReader", "Query", "ReadyForQuery",
           "RowData", "SslRequest", "Startup", "State", "Sync", "looks_like_startup")
