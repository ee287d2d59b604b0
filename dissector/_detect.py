"""Protocol detection by content; ports only break ties.

``detect(data, ...)`` looks at the first bytes one side sent and answers
``(protocol, sender_is_client)``, ``None`` (not enough bytes yet) or ``UNKNOWN``. It must be
cheap: every new flow passes through it once, and a flow it rejects is skipped for the rest
of its life at the cost of one dict lookup per packet.
"""

from __future__ import annotations

import re
from typing import Final

from .http1._parser import _REQ_START, _RESP_START, METHODS
from .http2 import PREFACE
from .postgres import looks_like_startup

__all__ = ("DNS_PORTS", "UNKNOWN", "detect")

UNKNOWN: Final = ("", False)
DNS_PORTS: Final = frozenset((53, 5353, 5355))
REDIS_PORTS: Final = frozenset((6379, 6380, 26379))
_METHOD_PREFIX: Final = tuple(m + b" " for m in METHODS)
_RESP_REQ = re.compile(rb"\*[0-9]{1,7}\r\n\$[0-9]{1,10}\r\n")


def detect(data: bytes, sport: int, dport: int, *, midstream: bool,
           ) -> tuple[str, bool] | None:
    """Classify the first bytes ``data`` sent from ``sport`` to ``dport``."""
    if len(data) < 4:
        return None
    head = data[:24]
    if PREFACE.startswith(head) or head.startswith(PREFACE):
        return ("http2", True) if len(data) >= 24 or PREFACE.startswith(data) else UNKNOWN
    if head.startswith(_METHOD_PREFIX):
        return ("http1", True)
    if head.startswith(b"HTTP/1."):
        return ("http1", False)
    if looks_like_startup(data):
        return ("postgres", True)
    if _RESP_REQ.match(data):
        return ("redis", True)
    if sport in REDIS_PORTS and data[:1] in (b"+", b"-", b":", b"$", b"*", b"%", b"_"):
        return ("redis", False)
    if dport in REDIS_PORTS and (data[:1] == b"*" or data[:4].isalpha()):
        return ("redis", True)
    if (dport in DNS_PORTS or sport in DNS_PORTS) and len(data) >= 14:
        length = (data[0] << 8) | data[1]
        if 12 <= length <= 65535 and (data[4] & 0x78) == 0:
            return ("dns", dport in DNS_PORTS)
    if midstream:
        # Joined a connection in the middle: look for an HTTP/1 start line further in.
        if _REQ_START.search(data):
            return ("http1", True)
        if _RESP_START.search(data):
            return ("http1", False)
        return None
    return UNKNOWN
