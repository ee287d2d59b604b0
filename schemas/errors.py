"""The one exception hierarchy every rawcap service shares.

Errors name the condition, not the module that noticed it, and carry policy as class
flags (``retriable``) in the style of aiokafka's errors: a caller decides to retry or give
up by looking at the flag, never by parsing a message.
"""

from __future__ import annotations

__all__ = (
    "BadMagic",
    "BatchError",
    "ConfigError",
    "CorruptBody",
    "RawcapError",
    "RecordOverrun",
    "TransportError",
    "TruncatedBatch",
    "UnsupportedVersion",
)


class RawcapError(Exception):
    """Base of every error rawcap raises on purpose; its str() is one line for the user."""

    retriable: bool = False


class ConfigError(RawcapError):
    """A configuration value is missing or invalid; the message names the key."""


class TransportError(RawcapError):
    """A broker, bucket or API server could not be reached or refused the request."""

    retriable = True


class BatchError(RawcapError):
    """A ``rawcap.packets`` message value is not a valid batch; it belongs in ``rawcap.dlq``."""


class BadMagic(BatchError):
    """The value does not start with the batch magic: not a rawcap batch at all."""


class TruncatedBatch(BatchError):
    """The value ends inside the header (or before the body it announces)."""


class UnsupportedVersion(BatchError):
    """The batch's major format version is one this reader does not know."""


class CorruptBody(BatchError):
    """The body does not decompress, or its size differs from the header's promise."""


class RecordOverrun(BatchError):
    """A packet record (or TPACKET_V3 frame) runs past the end of the body."""
