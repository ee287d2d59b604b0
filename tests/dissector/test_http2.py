from __future__ import annotations

import h2.config
import h2.connection
import pytest

from dissector._errors import Malformed
from dissector.http2 import PREFACE, Headers, HTTP2Reader, StreamData, split_frames

from .helpers import drain, same_at_every_split


def conversation() -> tuple[bytes, bytes]:
    """Real bytes from the h2 library: client GET + POST (gRPC), server answers + trailers."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", "/x"), (":scheme", "http"),
                       (":authority", "h"), ("cookie", "k=v")], end_stream=True)
    c.send_headers(3, [(":method", "POST"), (":path", "/pkg.S/M"), (":scheme", "http"),
                       (":authority", "h"), ("content-type", "application/grpc")])
    c.send_data(3, b"\0\0\0\0\1a", end_stream=True)
    cb = c.data_to_send()
    s.receive_data(cb)
    s.initiate_connection()
    s.send_headers(1, [(":status", "200")])
    s.send_data(1, b"hello", end_stream=True)
    s.send_headers(3, [(":status", "200"), ("content-type", "application/grpc")])
    s.send_headers(3, [("grpc-status", "0")], end_stream=True)
    return cb, s.data_to_send()


def test_client_and_server_every_split() -> None:
    cb, sb = conversation()
    assert cb.startswith(PREFACE)
    evs = same_at_every_split(lambda: HTTP2Reader(client=True), cb)
    hdrs = [e for e in evs if isinstance(e, Headers)]
    assert [dict(h.headers)[":path"] for h in hdrs] == ["/x", "/pkg.S/M"]
    sevs = same_at_every_split(lambda: HTTP2Reader(client=False), sb)
    assert [e.stream_id for e in sevs if isinstance(e, Headers)] == [1, 3, 3]
    assert any(isinstance(e, StreamData) and e.length == 5 and e.end_stream for e in sevs)


def test_split_frames_reports_consumed() -> None:
    _, sb = conversation()
    frames, used = split_frames(sb[:-3])
    assert used < len(sb) - 3 or used == 0 or frames
    frames2, used2 = split_frames(sb)
    assert used2 == len(sb) and len(frames2) > len(frames)


def test_bad_preface_and_gap() -> None:
    r = HTTP2Reader(client=True)
    r.feed(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10)
    with pytest.raises(Malformed):
        drain(r)
    cb, _ = conversation()
    r = HTTP2Reader(client=True)
    r.feed(cb[:40])
    drain(r)
    r.feed_gap(10)
    with pytest.raises(Malformed):
        drain(r)
