"""Batch codec properties: round trips, error classes, single copy on decode."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas import (
    BODY_TPACKET3,
    MAGIC,
    BadMagic,
    CorruptBody,
    Packet,
    RecordOverrun,
    TruncatedBatch,
    UnsupportedVersion,
    decode_batch,
    decode_header,
    encode_batch,
    encode_block_batch,
)
from schemas.tpacket import build_block

packets_st = st.lists(
    st.builds(
        lambda ts, data, extra, ifindex, pkttype: Packet(
            ts, len(data), len(data) + extra, ifindex, pkttype, data
        ),
        st.integers(0, 2**63 - 1),
        st.binary(max_size=300),
        st.integers(0, 1000),
        st.integers(0, 2**31 - 1),
        st.integers(0, 7),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(packets=packets_st, seq=st.integers(0, 2**63 - 1), node=st.text(max_size=40),
       codec=st.sampled_from(["zstd", "none"]))
def test_record_batches_round_trip(packets: list[Packet], seq: int, node: str, codec: str) -> None:
    value = encode_batch(node=node, seq=seq, packets=packets, ifaces={1: "eth0"}, codec=codec)
    batch = decode_batch(value)
    assert batch.header.node == node and batch.header.seq == seq
    assert batch.header.count == len(packets)
    assert [(p.ts_ns, p.caplen, p.origlen, p.ifindex, p.pkttype, bytes(p.data)) for p in batch.packets] == [
        (p.ts_ns, p.caplen, p.origlen, p.ifindex, p.pkttype, bytes(p.data)) for p in packets
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 * 10**9 - 1), st.binary(min_size=1, max_size=200)),
                min_size=1, max_size=20), st.integers(1, 3))
def test_block_batches_round_trip(frames: list[tuple[int, bytes]], nblocks: int) -> None:
    frames = sorted(frames)
    block = build_block([(ts, len(d), 2, 0, d) for ts, d in frames], block_size=8192)
    value = encode_block_batch(node="n", seq=1, blocks=[block] * nblocks, ifaces={2: "eth0"})
    batch = decode_batch(value)
    assert batch.header.body == BODY_TPACKET3
    assert batch.header.count == len(frames) * nblocks
    assert batch.header.first_ns == frames[0][0] and batch.header.last_ns == frames[-1][0]
    assert [bytes(p.data) for p in batch.packets] == [d for _, d in frames] * nblocks


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
@example(b"\x81\x90\x00")  # a map whose key is an array: unhashable (was a TypeError)
@example(b"\x81\x80\x00")  # ... a map
def test_garbage_raises_only_batch_errors(junk: bytes) -> None:
    for value in (junk, MAGIC + junk):
        try:
            decode_batch(value)
        except (BadMagic, TruncatedBatch, UnsupportedVersion, CorruptBody, RecordOverrun):
            pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_truncation_of_a_valid_batch_is_rejected(data: st.DataObject) -> None:
    value = encode_batch(node="n", seq=3, packets=[Packet(1, 5, 5, 1, 0, b"hello")] * 3,
                         ifaces={1: "lo"})
    cut = data.draw(st.integers(0, len(value) - 1))
    with pytest.raises((BadMagic, TruncatedBatch, CorruptBody, RecordOverrun)):
        decode_batch(value[:cut])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["node", "seq", "n", "t0", "t1", "ifaces", "link", "body", "codec", "blen", "snap"]),
       st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                 st.text(max_size=5), st.binary(max_size=5), st.lists(st.integers(0, 9), max_size=3),
                 st.dictionaries(st.integers(-9, 9), st.text(max_size=3), max_size=2)))
@example("seq", float("-inf"))  # int(-inf) is an OverflowError (was raised as such)
def test_a_mistyped_header_field_is_a_batch_error(field: str, value: object) -> None:
    good = encode_batch(node="n", seq=3, packets=[Packet(1, 5, 5, 1, 0, b"hello")] * 3, ifaces={1: "lo"})
    header, offset = decode_header(good)
    doc = {**header.to_msgpack_map(), field: value}
    try:
        decode_batch(MAGIC + msgpack.packb(doc) + good[offset:])
    except (TruncatedBatch, CorruptBody, RecordOverrun):
        pass


def test_unknown_major_version_error_is_clear() -> None:
    value = encode_batch(node="n", seq=1, packets=[], ifaces={})
    header, offset = decode_header(value)
    doc = header.to_msgpack_map()
    doc["v"] = [9, 1]
    with pytest.raises(UnsupportedVersion, match=r"version 9\.1 is not supported"):
        decode_batch(MAGIC + msgpack.packb(doc) + value[offset:])


def test_zip_bomb_header_is_refused_before_inflating() -> None:
    value = encode_batch(node="n", seq=1, packets=[], ifaces={})
    header, offset = decode_header(value)
    doc = header.to_msgpack_map()
    doc["blen"] = 10**12
    with pytest.raises(CorruptBody, match="out of range"):
        decode_batch(MAGIC + msgpack.packb(doc) + value[offset:])


def test_decoded_packets_are_views_into_one_buffer() -> None:
    """10,000 packets decode with one copy each: the decompressor's; no per-packet bytes."""
    pk = [Packet(i, 64, 64, 1, 0, bytes([i % 256]) * 64) for i in range(10_000)]
    batch = decode_batch(encode_batch(node="n", seq=1, packets=pk, ifaces={1: "eth0"}))
    views = [p.data for p in batch.packets]
    assert all(isinstance(v, memoryview) for v in views)
    bases = {id(v.obj) for v in views if isinstance(v, memoryview)}
    assert len(bases) == 1  # every packet points into the same decompressed body
