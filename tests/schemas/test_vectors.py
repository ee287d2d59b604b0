"""Golden vectors: the committed bytes decode to the committed JSON, and today's encoder
still produces the committed bytes (msgpack options and zstd level are pinned)."""

from __future__ import annotations

import pytest

from tests.schemas.vectors import VECTOR_DIR, VECTORS, describe, render


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_committed_bytes_decode_to_committed_json(name: str) -> None:
    value = (VECTOR_DIR / f"{name}.bin").read_bytes()
    expected = (VECTOR_DIR / f"{name}.json").read_text()
    assert render(describe(value)) == expected


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_encoder_reproduces_committed_bytes(name: str) -> None:
    assert VECTORS[name]() == (VECTOR_DIR / f"{name}.bin").read_bytes()


def test_every_error_vector_names_a_distinct_error() -> None:
    errors = [describe((VECTOR_DIR / f"{n}.bin").read_bytes()) for n in VECTORS if n.startswith("err_")]
    names = [e["error"] for e in errors]
    assert len(set(names)) == len(names) == 5


def test_vlan_tag_is_reinserted_like_libpcap() -> None:
    doc = describe((VECTOR_DIR / "tpacket3_zstd_vlan.bin").read_bytes())
    tagged = doc["packets"][1]
    data = bytes.fromhex(tagged["data"])
    assert data[12:16] == bytes.fromhex("81000064")  # TPID 0x8100, VLAN 100
    assert data[16:18] == b"\x08\x00"
    assert tagged["caplen"] == len(data)
