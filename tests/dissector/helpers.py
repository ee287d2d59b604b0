"""Feed helpers: whole, byte by byte, split at every offset (h11's test_io style)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from dissector._sentinel import NEED_DATA


def drain(reader: Any) -> list[Any]:
    out: list[Any] = []
    while True:
        ev = reader.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)


def chunkings(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def events_for(make: Callable[[], Any], chunks: list[bytes], eof: bool = False) -> list[Any]:
    r = make()
    out: list[Any] = []
    for c in chunks:
        r.feed(c, 0)
        out += drain(r)
    if eof:
        r.feed_eof()
        out += drain(r)
    return out


def same_at_every_split(make: Callable[[], Any], data: bytes, eof: bool = False) -> list[Any]:
    """Events for ``data`` fed whole; asserts every other chunking gives the same events."""
    want = events_for(make, [data], eof)
    for chunks in chunkings(data):
        assert events_for(make, chunks, eof) == want, f"split {[len(c) for c in chunks]}"
    return want


def pure_python_run(code: str) -> int:
    """Exit status of ``python -c code`` with the test hook ``no-ctwins`` (the compiled twins
    switched off)."""
    env = {**os.environ, "RAWCAP_TEST_HOOKS": "no-ctwins"}
    return subprocess.run([sys.executable, "-c", code], env=env).returncode
