"""Redis RESP2/RESP3: sans-I/O reader pairing commands with replies in order."""

from ._events import Command, Reply
from ._parser import RespReader, looks_like_resp
from ._state import State

__all__ = ("Command", "Reply", "RespReader", "State", "looks_like_resp")
