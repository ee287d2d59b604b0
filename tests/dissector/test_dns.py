from __future__ import annotations

import struct

import pytest

from dissector._errors import Malformed, Truncated
from dissector.dns import DnsTcpReader, parse_message, read_name

from .helpers import same_at_every_split


def name(n: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"


Q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name("www.example.com") + b"\0\x01\0\x01"
R = (struct.pack("!HHHHHH", 0x1234, 0x8183, 1, 1, 0, 0) + name("www.example.com")
     + b"\0\x01\0\x01" + b"\xc0\x0c\0\x01\0\x01\0\0\0\x3c\0\x04\x0a\0\0\x01")


def test_parse_query_and_response() -> None:
    q = parse_message(Q, 5)
    assert (q.id, q.is_response, q.questions[0].name, q.questions[0].qtype) == \
        (0x1234, False, "www.example.com", 1)
    r = parse_message(R)
    assert r.is_response and r.rcode == 3 and r.answers == 1


def test_compression_pointer_must_point_backwards() -> None:
    # pointer at offset 12 to itself
    loop = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\0\x01\0\x01"
    with pytest.raises(Malformed):
        parse_message(loop)
    fwd = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x20" + b"\0" * 40
    with pytest.raises(Malformed):
        parse_message(fwd)
    # a valid backwards pointer
    buf = name("a.b") + b"\x01c\xc0\x00"
    assert read_name(buf, 5) == ("c.a.b", 9)


def test_name_length_capped_and_truncation() -> None:
    long = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1"
    with pytest.raises(Malformed):
        parse_message(long)
    with pytest.raises(Truncated):
        parse_message(Q[:20])
    with pytest.raises(Truncated):
        parse_message(Q[:5])


def test_tcp_framing_every_split() -> None:
    data = struct.pack("!H", len(Q)) + Q + struct.pack("!H", len(R)) + R
    evs = same_at_every_split(DnsTcpReader, data)
    assert [e.is_response for e in evs] == [False, True]
