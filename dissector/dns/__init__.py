"""DNS over UDP and TCP: declarative header, guarded name decompression."""

from ._events import DnsMessage, Question
from ._parser import HEADER_FIELDS, DnsTcpReader, parse_message, read_name
from ._state import State

__all__ = ("HEADER_FIELDS", "DnsMessage", "DnsTcpReader", "Question", "State",
           "parse_message", "read_name")
