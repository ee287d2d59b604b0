"""The export's pcapng sink writes the golden EPB vectors (tests/rawcap/pcap/vectors) byte for
byte on each of its paths: the C converter from the compressed body and from the
decompressed one, the Python ``rec`` fast loop, the generic per-packet loop, and packet lists
(what the merge hands on around other nodes' packets)."""

from __future__ import annotations

from typing import Any

import pytest

from forensics import _sinks
from forensics._sinks import PcapngSink
from rawcap.window import WPacket
from schemas import decode_header, iter_packets
from tests.rawcap.pcap.vectors import VECTOR_DIR, VECTORS, header_and_body

WHOLE = sorted(n for n, (_b, lo, hi) in VECTORS.items() if (lo, hi) == (0, 2**64))


def _sink_file(sink: PcapngSink, add: Any) -> bytes:
    parts: list[Any] = [sink.header()]
    add(parts)
    return b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("name", WHOLE)
@pytest.mark.parametrize("path", ["c-compressed", "c", "python"])
def test_whole_batches_write_the_golden_bytes(name: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    value = (VECTOR_DIR / f"{name}.bin").read_bytes()
    golden = (VECTOR_DIR / f"{name}.pcapng").read_bytes()
    header, body = header_and_body(value)
    _, off = decode_header(value)
    if path == "python":
        monkeypatch.setattr(_sinks, "_FAST", False)
    sink = PcapngSink(0, False)

    def add(parts: list[Any]) -> None:
        sink.begin_batch()
        done = None
        if path == "c-compressed":
            done = sink.compressed_batch(header, memoryview(value)[off:], parts)
        if done is None:
            assert path != "c-compressed" or header.codec != "zstd"
            done = sink.batch(header, body, parts)
        assert done[0] == header.count

    assert _sink_file(sink, add) == golden


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_packet_lists_write_the_golden_bytes(name: str) -> None:
    _build, lo, hi = VECTORS[name]
    value = (VECTOR_DIR / f"{name}.bin").read_bytes()
    header, body = header_and_body(value)
    chunk = [WPacket(p.ts_ns, header.node, header.ifaces.get(p.ifindex, str(p.ifindex)), p.caplen,
                     p.origlen, p.pkttype, p.data)
             for p in iter_packets(header, body) if lo <= p.ts_ns < hi]
    sink = PcapngSink(0, False)
    golden = (VECTOR_DIR / f"{name}.pcapng").read_bytes()
    assert _sink_file(sink, lambda parts: sink.packets(chunk, parts)) == golden
