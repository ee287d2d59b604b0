"""Parsing one HTTP/1 head (start line + header block): the pure-Python reference and its
compiled twin.

``parse_head(buf, end, is_request)`` reads ``buf[:end]``, a head without its final CRLFCRLF,
and returns either a tuple or, when the head is malformed, the error message (a ``str``):

- request: ``(method, target, version, headers, content_length, chunked)``
- response: ``(status, reason, version, headers, content_length, chunked)``

``headers`` is a tuple of ``(name, value)`` pairs (latin-1 text, values stripped of SP/HTAB);
``content_length`` is None when absent. Rules: a header line is ``name:value`` with a
non-empty name that does not end in SP/HTAB and no CR or LF anywhere in the line;
Content-Length is ASCII digits only (≤ 18), and repeated ones must agree; the last
Transfer-Encoding decides ``chunked`` (its last coding); a request line is three
space-separated parts with a known method and ``HTTP/1.<digit>``; a status line starts with
``HTTP/1.<digit> `` and three ASCII digits ≥ 100.

``parse_head`` is ``dissector.http1._chttp1.parse_head`` (C, built by ``make setup``) when it
imports, else :func:`py_parse_head`; ``tests/dissector/test_http1_head.py`` holds the two to
the same results on real, mutated and random heads. the test hook ``no-ctwins`` picks the
reference.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Final

__all__ = ("COMPILED", "METHOD_NAMES", "VERSIONS", "parse_head", "py_parse_head")

METHOD_NAMES: Final = frozenset(("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH",
                                 "CONNECT", "TRACE"))
#: ``HTTP/1.`` and one ASCII digit (``str.isdigit`` alone would pass ``\xb2``).
VERSIONS: Final = frozenset(f"HTTP/1.{i}" for i in range(10))
#: ``name: value``: the name is non-empty and does not end in whitespace (RFC 9112 5.1);
#: optional whitespace (SP/HTAB, RFC 9110 5.6.3) before the value is skipped here, after it
#: stripped only when the block has any (rare).
_HEADER: Final = re.compile(r"^([^:\r\n]*[^:\r\n \t]):[ \t]*([^\r\n]*)\r\n", re.MULTILINE)

Head = tuple[Any, str, str, tuple[tuple[str, str], ...], int | None, bool]


def _header_lines(block: str) -> list[tuple[str, str]] | str:
    headers = []
    for line in block.split("\r\n")[:-1]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t" or "\r" in line or "\n" in line:
            # A bare CR or LF (RFC 9112 2.2 lets a recipient reject it) included.
            return f"bad HTTP/1 header line {line[:40]!r}"
        headers.append((name, value.strip(" \t")))
    return headers


def py_parse_head(buf: bytes | bytearray, end: int, is_request: bool) -> Head | str:
    """The reference: see the module docstring."""
    text = buf[:end].decode("latin-1")  # latin-1 maps every byte: never fails
    start, _, block = text.partition("\r\n")
    length: int | None = None
    chunked = False
    hdrs: tuple[tuple[str, str], ...] = ()
    if block:
        block += "\r\n"
        # One C-level pass for the common case; any line that is not ``name: value``, or
        # a bare CR or LF, sends the block through the line-by-line reader instead.
        headers: list[tuple[str, str]] = _HEADER.findall(block)
        n = block.count("\r\n")
        if len(headers) != n or block.count("\n") != n or block.count("\r") != n:
            lines = _header_lines(block)
            if isinstance(lines, str):
                return lines
            headers = lines
        elif " \r\n" in block or "\t\r\n" in block:
            headers = [(k, v.rstrip(" \t")) for k, v in headers]
        low = block.lower()
        i = low.find("content-length:")
        while i >= 0:
            if i == 0 or low[i - 1] == "\n":
                v = block[i + 15:block.find("\r\n", i)].strip(" \t")
                if not v.isdigit() or not v.isascii() or len(v) > 18:
                    return f"bad Content-Length {v[:20]!r}"
                if length is not None and length != int(v):
                    return "conflicting Content-Length headers"
                length = int(v)
            i = low.find("content-length:", i + 15)
        i = low.rfind("transfer-encoding:")
        while i >= 0:  # the last Transfer-Encoding header counts
            if i == 0 or low[i - 1] == "\n":
                v = low[i + 18:low.find("\r\n", i)]
                chunked = v.rsplit(",", 1)[-1].strip(" \t") == "chunked"
                break
            i = low.rfind("transfer-encoding:", 0, i)
        hdrs = tuple(headers)
    if is_request:
        parts = start.split(" ")
        if len(parts) != 3 or parts[0] not in METHOD_NAMES or parts[2] not in VERSIONS:
            return f"bad HTTP/1 request line {start[:60].encode('latin-1')!r}"
        return parts[0], parts[1], parts[2], hdrs, length, chunked
    if len(start) < 12 or start[:8] not in VERSIONS or start[8] != " " \
            or not start[9:12].isdigit() or not start[9:12].isascii():
        return f"bad HTTP/1 status line {start[:60].encode('latin-1')!r}"
    status = int(start[9:12])
    if status < 100:
        return f"bad HTTP/1 status {status}"
    return status, start[13:], start[:8], hdrs, length, chunked


parse_head: Callable[[bytes | bytearray, int, bool], Any]
try:
    from rawcap.hooks import hook

    if hook("no-ctwins"):
        raise ImportError("the test hook no-ctwins is on")
    # by its full name: the C module (no Python source) is no import of this package
    _c_parse_head = importlib.import_module("dissector.http1._chttp1").parse_head
except ImportError:
    COMPILED: bool = False
    parse_head = py_parse_head
else:
    COMPILED = True
    parse_head = _c_parse_head
