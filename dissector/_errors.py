"""Parser errors: truncated input (the capture ended or lost bytes) is not malformed input.

Both subclass ``ParseError`` (a ``RawcapError``) so that one ``except`` in the flow table
poisons exactly the flow that failed and nothing else.
"""

from __future__ import annotations

from schemas.errors import RawcapError

__all__ = ("Malformed", "ParseError", "Truncated")


class ParseError(RawcapError):
    """A protocol parser cannot go on with this flow."""


class Truncated(ParseError):
    """The input ended (end of capture, closed flow) in the middle of a message."""


class Malformed(ParseError):
    """The peer sent something the protocol does not allow (or a cap was exceeded)."""
