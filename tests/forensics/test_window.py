"""The time-window reader over the node FIFO buffer layout (no broker needed): merge order,
edge trimming, sequence gaps, duplicates, corrupt batches, unknown nodes."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from rawcap.config import load_config
from rawcap.window import WindowReader
from schemas import Packet, encode_batch, encode_block_batch
from schemas.errors import ConfigError
from schemas.stream import frame_batch, stream_header
from schemas.tpacket import build_block

S = 1_000_000_000
T0 = 1_800_000_000 * S


def _frame(i: int) -> bytes:
    return b"\x02" * 12 + b"\x08\x00" + i.to_bytes(4, "big") * 12


def _batches(node: str, times: list[int], per: int, seq0: int = 1) -> list[bytes]:
    out = []
    for k in range(0, len(times), per):
        chunk = times[k : k + per]
        pk = [Packet(t, 62, 62, 3, 0, _frame(t % 100000)) for t in chunk]
        out.append(encode_batch(node=node, seq=seq0 + k // per, packets=pk, ifaces={3: "eth0"}))
    return out


def _segment(path: Path, values: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stream_header() + b"".join(frame_batch(v) + v for v in values))


def _cfg(tmp: Path):
    return load_config(None, {"capture.bufferDir": str(tmp)}, env={})


async def _read(cfg, lo: int, hi: int, **kw) -> tuple[list, WindowReader]:
    async with WindowReader(cfg, lo, hi, source="local", **kw) as r:
        out = [p async for chunk in r.packets(chunk=7) for p in chunk]
    return out, r


async def test_merge_two_nodes_in_time_order_and_trim(tmp_path: Path) -> None:
    rng = random.Random(4)
    ta = sorted(T0 + rng.randrange(0, 10 * S) for _ in range(400))
    tb = sorted(T0 + rng.randrange(0, 10 * S) for _ in range(300))
    va, vb = _batches("node-a", ta, 37), _batches("node-b", tb, 50)
    _segment(tmp_path / "node-a" / "000001.rcsg", va[:5])
    _segment(tmp_path / "node-a" / "000002.rcsg", va[5:])
    _segment(tmp_path / "node-b" / "000001.rcsg", vb)
    lo, hi = T0 + 2 * S, T0 + 7 * S
    got, r = await _read(_cfg(tmp_path), lo, hi)
    want = sorted([(t, "node-a") for t in ta if lo <= t < hi] + [(t, "node-b") for t in tb if lo <= t < hi])
    assert [(p.ts_ns, p.node) for p in got] == want
    assert {p.iface for p in got} == {"eth0"}
    assert r.stats.nodes["node-a"].packets == sum(1 for t in ta if lo <= t < hi)
    assert r.stats.nodes["node-a"].gaps == [] and r.stats.corrupt == 0
    only_b, _ = await _read(_cfg(tmp_path), lo, hi, nodes=["node-b"])
    assert [p.ts_ns for p in only_b] == [t for t in tb if lo <= t < hi]


async def test_gap_duplicate_and_corrupt_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    times = [T0 + i * S // 10 for i in range(100)]
    v = _batches("n1", times, 10)
    corrupt = bytearray(v[4])
    corrupt[-30] ^= 0xFF  # zstd checksum fails: CorruptBody
    # batch 3 lost (gap), batch 2 delivered twice, batch 5 corrupt
    _segment(tmp_path / "n1" / "a.rcsg", [v[0], v[1], v[1], v[3], bytes(corrupt), *v[5:]])
    with caplog.at_level(logging.WARNING, logger="rawcap.window"):
        got, r = await _read(_cfg(tmp_path), T0, T0 + 100 * S)
    expect = [t for i, t in enumerate(times) if i // 10 not in (2, 4)]
    assert [p.ts_ns for p in got] == expect
    st = r.stats.nodes["n1"]
    assert st.gaps == [(3, 3)] and st.duplicates == 1 and r.stats.corrupt == 1
    text = caplog.text
    assert "sequence gap: batches 3..3 missing" in text and "corrupt batch skipped" in text


async def test_tpacket3_batches_and_empty_window(tmp_path: Path) -> None:
    frames = [(T0 + i * 1000, 62, 2, 0, _frame(i)) for i in range(20)]
    block = build_block(frames)
    value = encode_block_batch(node="k", seq=1, blocks=[block], ifaces={2: "veth0"})
    _segment(tmp_path / "k" / "s.rcsg", [value])
    got, _ = await _read(_cfg(tmp_path), T0, T0 + S)
    assert [p.ts_ns for p in got] == [f[0] for f in frames] and got[0].iface == "veth0"
    empty, r = await _read(_cfg(tmp_path), T0 + 5 * S, T0 + 6 * S)
    assert empty == [] and r.stats.packets == 0


async def test_bad_inputs(tmp_path: Path) -> None:
    _segment(tmp_path / "known" / "s.rcsg", _batches("known", [T0], 1))
    with pytest.raises(ConfigError, match=r"unknown node 'nope'.*known"):
        await _read(_cfg(tmp_path), T0, T0 + S, nodes=["nope"])
    with pytest.raises(ConfigError, match="is after --to"):
        WindowReader(_cfg(tmp_path), T0 + S, T0, source="local")
    with pytest.raises(ConfigError, match="does not exist"):
        await _read(_cfg(tmp_path / "missing"), T0, T0 + S)


async def test_export_skips_a_batch_whose_records_overrun(tmp_path: Path) -> None:
    """A batch that passes its checksums but whose records overrun the body is counted as
    corrupt by the fast pcapng path and the rest of the window is still written."""
    import io
    import struct

    from forensics import write_capture
    from rawcap.pcap import read_capture

    times = [T0 + i * S // 100 for i in range(30)]
    good = _batches("n", times, 10)
    bad_pk = [Packet(T0 + S + i, 62, 62, 3, 0, _frame(i)) for i in range(5)]
    bad = bytearray(encode_batch(node="n", seq=4, packets=bad_pk, ifaces={3: "eth0"}, codec="none"))
    body_at = len(bad) - sum(24 + 62 for _ in bad_pk)
    struct.pack_into("<I", bad, body_at + 2 * 86 + 8, 5000)  # record 2 claims 5000 bytes
    _segment(tmp_path / "n" / "s.rcsg", [*good, bytes(bad)])
    out = io.BytesIO()
    async with WindowReader(_cfg(tmp_path), T0, T0 + 10 * S, source="local") as r:
        n = await write_capture(r, out)
    assert n == 30 and r.stats.corrupt == 1 and r.stats.nodes["n"].packets == 30
    got = [rec for recs in read_capture(io.BytesIO(out.getvalue())) for rec in recs]
    assert [g.ts_ns for g in got] == times


async def test_two_nodes_sharing_one_lane_merge_in_time_order(tmp_path: Path) -> None:
    """Like two nodes whose keys hash to one Kafka partition: batches interleave in the lane."""
    from rawcap.window import ValueLane

    rng = random.Random(9)
    ta = sorted(T0 + rng.randrange(0, 4 * S) for _ in range(300))
    tb = sorted(T0 + rng.randrange(0, 4 * S) for _ in range(300))
    va, vb = _batches("a", ta, 20), _batches("b", tb, 30)
    # Shipping order: by each batch's first packet time, as two live agents would produce.
    order = sorted([(decode_first(v), v) for v in va + vb])

    async def values():
        for _, v in order:
            yield v

    async with WindowReader(
        _cfg(tmp_path), T0, T0 + 4 * S, lanes=[ValueLane("p0", values())], source="snapshot"
    ) as r:
        got = [(p.ts_ns, p.node) for chunk in [c async for c in r.packets()] for p in chunk]
    assert got == sorted([(t, "a") for t in ta] + [(t, "b") for t in tb])


def decode_first(value: bytes) -> int:
    from schemas import decode_header

    return decode_header(value)[0].first_ns
