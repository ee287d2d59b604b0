"""HTTP/2 (+ gRPC): frame splitter, HPACK via ``hpack``, per-direction sans-I/O reader."""

from ._events import Frame, GoAway, Headers, StreamData, StreamReset
from ._parser import PREFACE, HTTP2Reader, split_frames
from ._state import State

__all__ = ("PREFACE", "Frame", "GoAway", "HTTP2Reader", "Headers", "State", "StreamData",
           "StreamReset", "split_frames")
