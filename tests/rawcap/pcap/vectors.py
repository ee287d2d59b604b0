"""Golden EPB vectors: batch values in, the pcapng an export writes of them out.

``python -m tests.rawcap.pcap.vectors`` rewrites ``vectors/`` (only for a deliberate change of
the pcapng output, said so in the commit). Each vector is ``NAME.bin`` (a batch exactly as it
travels on rawcap.packets) and ``NAME.pcapng`` (the file ``rawcap pcap export`` writes of that
one batch: SHB, each interface's IDB before its first packet, one EPB per packet in
``[lo, hi)``, ``if_tsresol`` 9). Every writer of EPBs must reproduce ``NAME.pcapng`` byte for
byte: the Python reference, the C converter (both entry points), the export sink's paths and
:class:`rawcap.pcap.PcapngWriter` (``test_vectors.py``, ``tests/forensics/test_export_vectors.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rawcap.pcap import PcapngWriter, Resolve, epbs_py
from schemas import BatchHeader, Packet, decode_header, decompress_body, encode_batch
from tests.schemas.vectors import tpacket3_zstd

VECTOR_DIR = Path(__file__).parent / "vectors"
#: Just under a 2**32 ns boundary: the EPB's high and low timestamp words both change.
T0 = (1_763_892_000_123_456_789 // 2**32 + 1) * 2**32 - 3_000
ALL = (0, 2**64)


def _frame(n: int, seed: int) -> bytes:
    head = bytes.fromhex("020000000001020000000002080045000000000040004006000a0ae701010ae70102")
    return (head + bytes((seed * 7 + i) & 0xFF for i in range(max(0, n - len(head)))))[:n]


def _pads() -> list[Packet]:
    """Every padding (caplen % 4 = 0..3), an interface change and back, a snapped packet."""
    sizes = [(60, 60, 2), (61, 61, 2), (62, 62, 3), (63, 63, 3), (64, 1514, 2), (1397, 1397, 2)]
    return [Packet(T0 + i * 1_000, cap, orig, ifx, 0 if i % 2 else 4, _frame(cap, i))
            for i, (cap, orig, ifx) in enumerate(sizes)]


def rec_pads() -> bytes:
    return encode_batch(node="node-a", seq=7, packets=_pads(), ifaces={2: "eth0", 3: "veth1"}, level=1)


def rec_none() -> bytes:
    return encode_batch(node="node-b", seq=8, packets=_pads()[:3], ifaces={2: "eth0"}, codec="none")


#: name -> (batch builder, lo, hi): the window trims packets (the converter's job, not the sink's).
VECTORS: dict[str, tuple[Callable[[], bytes], int, int]] = {
    "rec_pads": (rec_pads, *ALL),
    "rec_pads_window": (rec_pads, T0 + 1_000, T0 + 4_001),
    "rec_none": (rec_none, *ALL),
    "tpacket3_vlan": (tpacket3_zstd, *ALL),
}


def header_and_body(value: bytes) -> tuple[BatchHeader, bytes | memoryview]:
    header, off = decode_header(value)
    return header, decompress_body(header, memoryview(value)[off:])


def resolver(writer: PcapngWriter, header: BatchHeader) -> Resolve:
    """What the export gives the converter: interface ids and IDBs named ``node:iface``."""

    def resolve(ifindex: int) -> tuple[int, bytes]:
        return writer.interface(f"{header.node}:{header.ifaces.get(ifindex, str(ifindex))}")

    return resolve


def reference(value: bytes, lo: int, hi: int) -> bytes:
    """The pcapng file of one batch through the pure-Python reference."""
    header, body = header_and_body(value)
    writer = PcapngWriter(snaplen=0)
    out, _n, _b = epbs_py(header, body, lo, hi, resolver(writer, header))
    return writer.header() + out


def main() -> None:
    VECTOR_DIR.mkdir(exist_ok=True)
    for name, (build, lo, hi) in VECTORS.items():
        value = build()
        (VECTOR_DIR / f"{name}.bin").write_bytes(value)
        (VECTOR_DIR / f"{name}.pcapng").write_bytes(reference(value, lo, hi))
        print(name, len(value))


if __name__ == "__main__":
    main()
