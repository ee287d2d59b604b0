"""Delayed dissection: TCP reassembly and sans-I/O L7 parsers turning raw packets into calls.

``Dissector`` takes Ethernet frames and emits ``schemas.calls.Call`` records; the protocol
readers (``dissector.http1``, ``http2``, ``dns``, ``redis``) take bytes and return events and
know nothing of sockets, Kafka or clocks, so one parser serves replay, live, tests and fuzz.
"""

from ._calls import DEFAULT_REDACT, Redactor
from ._detect import detect
from ._engine import Dissector
from ._errors import Malformed, ParseError, Truncated
from ._reassembly import Gap, ReassemblyStats, StreamData, StreamEnd, TcpStream, collect_events
from ._sentinel import NEED_DATA
from ._store import CallStore

__all__ = ("DEFAULT_REDACT", "NEED_DATA", "CallStore", "Dissector", "Gap", "Malformed",
           "ParseError", "ReassemblyStats", "Redactor", "StreamData", "StreamEnd", "TcpStream",
           "Truncated", "collect_events", "detect")
