"""Every EPB writer of rawcap.pcap reproduces the golden pcapng files byte for byte: the
Python reference, the C converter (decompressed body, and inflating the body itself) and
PcapngWriter (the C file repeats the layouts of _blocks.py and schemas; this is its check)."""

from __future__ import annotations

import pytest

from rawcap.pcap import PcapngWriter, epbs_c, epbs_py, epbs_zstd
from rawcap.pcap import _convert as convert
from schemas import iter_packets

from .vectors import VECTOR_DIR, VECTORS, header_and_body, resolver


def _golden(name: str) -> tuple[bytes, bytes, int, int]:
    _build, lo, hi = VECTORS[name]
    return (VECTOR_DIR / f"{name}.bin").read_bytes(), (VECTOR_DIR / f"{name}.pcapng").read_bytes(), lo, hi


def test_the_c_converter_is_built_with_its_zstd() -> None:
    """Otherwise the comparisons below would compare the reference with itself."""
    assert convert.FAST and convert.FAST_ZSTD and convert._c is not None


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_committed_inputs_are_what_the_builders_make(name: str) -> None:
    assert VECTORS[name][0]() == (VECTOR_DIR / f"{name}.bin").read_bytes()


@pytest.mark.parametrize("convert_fn", [epbs_py, epbs_c], ids=["python", "c"])
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_converters_write_the_golden_bytes(name: str, convert_fn: object) -> None:
    value, golden, lo, hi = _golden(name)
    header, body = header_and_body(value)
    writer = PcapngWriter(snaplen=0)
    out, n, nbytes = convert_fn(header, body, lo, hi, resolver(writer, header))  # type: ignore[operator]
    assert writer.header() + out == golden
    kept = [p for p in iter_packets(header, body) if lo <= p.ts_ns < hi]
    assert (n, nbytes) == (len(kept), sum(p.caplen for p in kept))


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_c_converter_inflating_the_body_writes_the_golden_bytes(name: str) -> None:
    value, golden, lo, hi = _golden(name)
    header, _ = header_and_body(value)
    from schemas import decode_header

    _, off = decode_header(value)
    writer = PcapngWriter(snaplen=0)
    res = epbs_zstd(header, memoryview(value)[off:], lo, hi, resolver(writer, header))
    if header.codec != "zstd":
        assert res is None  # left to decompress_body + epbs
        return
    assert res is not None and writer.header() + res[0] == golden


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_pcapng_writer_writes_the_golden_bytes(name: str) -> None:
    value, golden, lo, hi = _golden(name)
    header, body = header_and_body(value)
    writer = PcapngWriter(snaplen=0)
    parts: list[bytes | memoryview] = [writer.header()]
    for p in iter_packets(header, body):
        if lo <= p.ts_ns < hi:
            idx, idb = writer.interface(f"{header.node}:{header.ifaces.get(p.ifindex, str(p.ifindex))}")
            parts.append(idb)
            parts += PcapngWriter.packets(idx, [(p.ts_ns, p.caplen, p.origlen, p.data)])
    assert b"".join(parts) == golden
