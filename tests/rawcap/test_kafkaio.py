"""rawcap._kafkaio: the chunk-keeping stream reader gives what asyncio.StreamReader gives."""

from __future__ import annotations

import asyncio
import random

import pytest

from rawcap import _kafkaio
from rawcap._kafkaio import ChunkReader


async def _frames(
    reader: asyncio.StreamReader, data: bytes, cuts: list[int], sizes: list[int]
) -> list[bytes]:
    """Feed ``data`` cut at ``cuts`` while reading frames of ``sizes``."""

    async def feed() -> None:
        prev = 0
        for c in [*cuts, len(data)]:
            reader.feed_data(data[prev:c])
            prev = c
            await asyncio.sleep(0)
        reader.feed_eof()

    task = asyncio.ensure_future(feed())
    out = []
    for n in sizes:
        out.append(await reader.readexactly(n))
    await task
    return out


@pytest.mark.parametrize("seed", range(40))
def test_same_frames_as_streamreader(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 4, 7, 300, 70_000, 300_000]) for _ in range(rng.randrange(1, 30))]
    data = rng.randbytes(sum(sizes) + rng.randrange(0, 10))
    k = min(max(len(data) - 1, 0), rng.randrange(0, 40))
    cuts = sorted(rng.sample(range(1, len(data)), k)) if k else []

    async def both() -> tuple[list[bytes], list[bytes]]:
        return (
            await _frames(asyncio.StreamReader(limit=2**16), data, cuts, sizes),
            await _frames(ChunkReader(limit=2**16), data, cuts, sizes),
        )

    want, got = asyncio.run(both())
    assert got == want
    assert all(type(g) is bytes for g in got)


def test_eof_inside_a_frame_is_incomplete_read() -> None:
    async def run() -> asyncio.IncompleteReadError:
        r = ChunkReader()
        r.feed_data(b"abcdef")
        assert await r.readexactly(2) == b"ab"
        r.feed_data(b"gh")
        r.feed_eof()
        with pytest.raises(asyncio.IncompleteReadError) as err:
            await r.readexactly(10)
        assert r.at_eof()
        return err.value

    exc = asyncio.run(run())
    assert exc.partial == b"cdefgh" and exc.expected == 10


def test_other_read_methods_are_refused() -> None:
    async def run() -> None:
        r = ChunkReader()
        with pytest.raises(NotImplementedError):
            await r.readline()

    asyncio.run(run())


def test_install_takes_this_aiokafka() -> None:
    from aiokafka import conn

    assert _kafkaio.install() is True
    assert conn.asyncio.StreamReader is ChunkReader
    assert conn.asyncio.sleep is asyncio.sleep  # everything else is asyncio's
