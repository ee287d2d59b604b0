"""The compiled record walk (``dissector/_cwalk.c``) against the pure-Python reference
(``Dissector._py_walk``): on real traffic and on captures mutated packet by packet (dropped,
duplicated, reordered, cut, bits flipped; flows joined mid-stream, RST/FIN anywhere), in
pcap (both byte orders, truncated) and batch-body layouts, the same calls come out in the
same order, with the same counters, packets counted and end offset; and every record walked
equals feeding ``Dissector.packet`` frame by frame."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissector import Dissector, _cwalk, _engine  # _cwalk: built by make setup

from .test_engine import frames

FUZZ = settings(max_examples=int(os.environ.get("RAWCAP_FUZZ_EXAMPLES", "400")) // 4,
                deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
DATA = Path(__file__).resolve().parents[1] / "data"


def pcap(fr: list[tuple[int, bytes]], big: bool = False, cut: int = 0) -> bytes:
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts, data in fr:
        out.append(struct.pack(e + "IIII", ts // 10**9, ts % 10**9 // 1000, len(data), len(data)))
        out.append(data)
    blob = b"".join(out)
    return blob[:len(blob) - cut]


def body(fr: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("<QIIiB3x", ts, len(d), len(d), 2, 0) + d for ts, d in fr)


def outcome(walk: Any, blob: bytes, layout: str) -> tuple[Any, ...]:
    out: list[Any] = []
    d = Dissector(out.append, node="n1", max_flows=64)
    if layout == "rec":
        n, end = walk(d, blob, 0, 24, 1, 1 << 32, False)
    else:
        big = layout == "pcap-be"
        n, end = walk(d, blob, 24, 16, 1_000_000_000, 1000, big)
    packets = d.packets
    d.finish()
    return [c.as_dict() for c in out], d.stats(), packets, n, end


def same(blob_fr: list[tuple[int, bytes]], cut: int = 0) -> None:
    for layout, blob in (("pcap-le", pcap(blob_fr, cut=cut)), ("pcap-be", pcap(blob_fr, True, cut)),
                         ("rec", body(blob_fr))):
        py = outcome(Dissector._py_walk, blob, layout)
        assert outcome(_cwalk.walk, blob, layout) == py, layout


def test_real_traffic_same_calls(real_pcap: Path) -> None:
    fr = frames(real_pcap)
    same(fr)
    same(fr, cut=7)
    # and the walk is what feeding Dissector.packet frame by frame gives
    out: list[Any] = []
    d = Dissector(out.append, node="n1", max_flows=64)
    d.run([(ts // 1000 * 1000, b) for ts, b in fr])
    d.finish()
    assert outcome(_cwalk.walk, pcap(fr), "pcap-le")[0] == [c.as_dict() for c in out]


def test_the_engine_walks_with_the_twin() -> None:
    assert _engine._walk is _cwalk.walk


@st.composite
def mutated_capture(draw: Any, fr: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    out = list(fr)
    for _ in range(draw(st.integers(0, 12))):
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "cut", "flip", "start"]))
        ts, data = out[i]
        if op == "drop":
            del out[i]
        elif op == "dup":
            out.insert(i, (ts, data))
        elif op == "swap" and i + 1 < len(out):
            out[i], out[i + 1] = out[i + 1], out[i]
        elif op == "cut":
            out[i] = (ts, data[:draw(st.integers(0, len(data)))])
        elif op == "flip" and data:
            j = draw(st.integers(0, len(data) - 1))
            out[i] = (ts, data[:j] + bytes([draw(st.integers(0, 255))]) + data[j + 1:])
        elif op == "start":
            out = out[i:]  # joined mid-stream
    return out


@FUZZ
@given(st.data())
def test_mutated_captures_same_calls(real_pcap: Path, data: st.DataObject) -> None:
    fr = frames(real_pcap)
    same(data.draw(mutated_capture(fr)))
