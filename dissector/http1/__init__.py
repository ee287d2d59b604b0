"""HTTP/1.x: sans-I/O per-direction reader (keep-alive, pipelining, chunked, capped bodies)."""

from ._events import EndOfMessage, Request, Response, Resync
from ._parser import CLIENT, METHODS, SERVER, HTTP1Reader, PyHTTP1Reader
from ._state import State

__all__ = ("CLIENT", "METHODS", "SERVER", "EndOfMessage", "HTTP1Reader", "PyHTTP1Reader",
           "Request", "Response", "Resync", "State")
