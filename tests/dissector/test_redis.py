from __future__ import annotations

import pytest

from dissector._errors import Malformed, Truncated
from dissector.redis import Command, Reply, RespReader

from .helpers import drain, same_at_every_split

CMDS = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nget\r\n$3\r\nkey\r\nPING\r\n"
REPLIES = b"+OK\r\n$5\r\nvalue\r\n-ERR wrong\r\n*2\r\n:1\r\n*1\r\n$-1\r\n%1\r\n+a\r\n:2\r\n"


def test_commands_every_split() -> None:
    evs = same_at_every_split(lambda: RespReader(client=True), CMDS)
    assert [(e.name, e.key) for e in evs if isinstance(e, Command)] == \
        [("SET", "key"), ("GET", "key"), ("PING", "")]


def test_replies_every_split() -> None:
    evs = same_at_every_split(lambda: RespReader(client=False), REPLIES)
    assert [e.kind for e in evs if isinstance(e, Reply)] == ["+", "$", "-", "*", "%"]
    assert evs[2].error == "ERR wrong"


def test_errors() -> None:
    r = RespReader(client=False)
    r.feed(b"?what\r\n")
    with pytest.raises(Malformed):
        drain(r)
    r = RespReader(client=True)
    r.feed(b"*2\r\n$3\r\nGET\r\n")
    assert drain(r) == []
    r.feed_eof()
    with pytest.raises(Truncated):
        drain(r)
    r = RespReader(client=False)
    r.feed(b"*1\r\n" * 40)
    with pytest.raises(Malformed):
        drain(r)
