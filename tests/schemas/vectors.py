"""Golden vector definitions: inputs built deterministically, outputs committed as files.

``python -m tests.schemas.vectors`` rewrites ``vectors/`` (only do that for a deliberate
format change, and say so in FORMAT.md's changelog). Each vector is ``NAME.bin`` (the batch
exactly as it travels on rawcap.packets) and ``NAME.json`` (what a reader must decode, or
the error it must raise).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from schemas import Packet, decode_batch, encode_batch, encode_block_batch
from schemas.errors import BatchError
from schemas.tpacket import FRAME_HDR, TP_STATUS_VLAN_VALID, build_block

VECTOR_DIR = Path(__file__).parent / "vectors"
T0 = 1_763_892_000_123_456_789  # 2025-11-23T10:00:00.123456789Z

ETH_IP_TCP = bytes.fromhex(
    "02000000000102000000000208004500003c1c4640004006b1e60ae70101"
    "0ae70102c35000501a2b3c4d00000000a002faf0fe300000020405b40402080a0001e2400000000001030307"
)
ETH_IP_UDP = bytes.fromhex(
    "020000000002020000000001080045000029abcd00004011b8c40ae701020ae70101"
    "0035d4310015c0de68656c6c6f2c20726177636170"
)


def _packets() -> list[Packet]:
    return [
        Packet(T0, len(ETH_IP_TCP), len(ETH_IP_TCP), 2, 4, ETH_IP_TCP),
        Packet(T0 + 1_500, len(ETH_IP_UDP), len(ETH_IP_UDP), 3, 0, ETH_IP_UDP),
        # snapped: caplen < origlen
        Packet(T0 + 2_000_000, 20, 1514, 2, 0, ETH_IP_TCP[:20]),
    ]


def rec_zstd() -> bytes:
    return encode_batch(node="node-a", seq=42, packets=_packets(),
                        ifaces={2: "eth0", 3: "veth1"}, snaplen=0, level=1)


def rec_none_empty() -> bytes:
    return encode_batch(node="node-b", seq=0, packets=[], ifaces={}, codec="none")


def _vlan_block() -> bytes:
    frames = [(p.ts_ns, p.origlen, p.ifindex, p.pkttype, bytes(p.data)) for p in _packets()]
    block = bytearray(build_block(frames, seq=9))
    # Mark the second frame as VLAN 100 (tag stripped by the kernel into tp_vlan_tci).
    off = 48
    nxt = struct.unpack_from("<I", block, off)[0]
    second = off + nxt
    fields = list(FRAME_HDR.unpack_from(block, second))
    fields[5] |= TP_STATUS_VLAN_VALID
    fields[9] = 100
    FRAME_HDR.pack_into(block, second, *fields)
    return bytes(block)


def tpacket3_zstd() -> bytes:
    return encode_block_batch(node="node-a", seq=43, blocks=[_vlan_block(), _vlan_block()],
                              ifaces={2: "eth0", 3: "veth1"}, level=1)


def minor_version_extra() -> bytes:
    """A batch from a newer minor version (1.7) with a key this reader does not know."""
    good = rec_zstd()
    from schemas import MAGIC, decode_header

    header, offset = decode_header(good)
    doc = header.to_msgpack_map()
    doc["v"] = [1, 7]
    doc["future"] = "ignored"
    return MAGIC + msgpack.packb(doc, use_bin_type=True) + good[offset:]


def _with_header(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    from schemas import MAGIC, decode_header

    good = rec_zstd()
    header, offset = decode_header(good)
    doc = header.to_msgpack_map()
    mutate(doc)
    return MAGIC + msgpack.packb(doc, use_bin_type=True) + good[offset:]


def err_unknown_major() -> bytes:
    return _with_header(lambda d: d.__setitem__("v", [2, 0]))


def err_truncated_header() -> bytes:
    return rec_zstd()[:20]


def err_corrupt_body() -> bytes:
    good = bytearray(rec_zstd())
    good[-12] ^= 0xFF
    return bytes(good)


def err_record_overrun() -> bytes:
    # Announce one more record than the body holds.
    return _with_header(lambda d: d.__setitem__("n", d["n"] + 1))


def err_bad_magic() -> bytes:
    return b"PCAP" + rec_zstd()[4:]


VECTORS: dict[str, Callable[[], bytes]] = {
    "rec_zstd": rec_zstd,
    "rec_none_empty": rec_none_empty,
    "tpacket3_zstd_vlan": tpacket3_zstd,
    "minor_version_extra": minor_version_extra,
    "err_unknown_major": err_unknown_major,
    "err_truncated_header": err_truncated_header,
    "err_corrupt_body": err_corrupt_body,
    "err_record_overrun": err_record_overrun,
    "err_bad_magic": err_bad_magic,
}


def describe(value: bytes) -> dict[str, Any]:
    """What a reader makes of ``value``, as JSON-able data."""
    try:
        batch = decode_batch(value)
    except BatchError as exc:
        return {"error": type(exc).__name__}
    h = batch.header
    return {
        "header": {
            "version": list(h.version), "node": h.node, "seq": h.seq, "count": h.count,
            "first_ns": h.first_ns, "last_ns": h.last_ns,
            "ifaces": {str(k): v for k, v in sorted(h.ifaces.items())},
            "linktype": h.linktype, "body": h.body, "codec": h.codec,
            "body_len": h.body_len, "snaplen": h.snaplen, "extra": h.extra,
        },
        "packets": [
            {"ts_ns": p.ts_ns, "caplen": p.caplen, "origlen": p.origlen, "ifindex": p.ifindex,
             "pkttype": p.pkttype, "data": bytes(p.data).hex()}
            for p in batch.packets
        ],
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main() -> None:
    VECTOR_DIR.mkdir(exist_ok=True)
    for name, build in VECTORS.items():
        value = build()
        (VECTOR_DIR / f"{name}.bin").write_bytes(value)
        (VECTOR_DIR / f"{name}.json").write_text(render(describe(value)))
        print(name, len(value))


if __name__ == "__main__":
    main()
