"""Unit tests without a network: batcher, FIFO buffer, procs records."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest
import zstandard

from capture._batcher import BlockBatcher, ClosedBatch
from capture._fifo import Fifo
from rawcap.kafka import Framed
from schemas import decode_batch, encode_block_batch
from schemas.errors import RawcapError
from schemas.procs import ProcRecord, decode_proc, parse_container
from schemas.tpacket import build_block

from .helpers import read_fifo


def _block(n: int, t0: int, payload: bytes = b"\x00" * 60, size: int = 1 << 16) -> bytes:
    return build_block([(t0 + i, len(payload), 3, 0, payload) for i in range(n)], block_size=size)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_batcher_spans_blocks_and_matches_schema_encoder() -> None:
    clock = _Clock()
    b = BlockBatcher(node="n", next_seq=7, ifaces=lambda: {3: "eth0"}, max_bytes=1 << 20,
                     max_delay=1.0, level=1, clock=clock)
    blocks = [_block(5, 1_000), _block(3, 2_000)]
    for blk in blocks:
        assert b.add_block(memoryview(blk)) == []
    assert not b.due()
    clock.t = 1.5
    assert b.due()
    out = b.close()
    assert isinstance(out, ClosedBatch) and out.seq == 7 and out.count == 8
    batch = decode_batch(out.value)
    assert batch.header.first_ns == 1_000 and batch.header.last_ns == 2_002
    assert [p.ts_ns for p in batch.packets] == [1000, 1001, 1002, 1003, 1004, 2000, 2001, 2002]
    ref = decode_batch(encode_block_batch(node="n", seq=7, blocks=blocks, ifaces={3: "eth0"}))
    assert [bytes(p.data) for p in ref.packets] == [bytes(p.data) for p in batch.packets]
    assert b.next_seq == 8 and b.close() is None


def test_batcher_closes_at_max_bytes_and_skips_empty_blocks() -> None:
    b = BlockBatcher(node="n", next_seq=1, ifaces=dict, max_bytes=1000, max_delay=10, level=1)
    assert b.add_block(memoryview(build_block([], block_size=4096))) == []
    [out] = b.add_block(memoryview(_block(20, 5)))
    assert out.count == 20 and not b.pending


def test_batcher_closes_the_open_batch_before_it_would_overflow() -> None:
    """A batch body never exceeds max(maxBytes, block size): the topic's max.message.bytes
    is checked against those two, and a bigger record would stall the shipper."""
    b = BlockBatcher(node="n", next_seq=1, ifaces=dict, max_bytes=2500, max_delay=10, level=1)
    assert b.add_block(memoryview(_block(10, 5))) == []
    first = b.add_block(memoryview(_block(10, 50)))[0]  # ~1.5 KiB + ~1.5 KiB > 2500
    assert first.count == 10 and first.raw_bytes <= 2500 and b.pending
    last = b.close()
    assert last is not None and last.count == 10


def test_batcher_compresses_every_batch_in_one_shot() -> None:
    """A block that fills the batch on its own is compressed straight from the ring and
    closes it; smaller blocks are gathered and compressed together at close. Either way the
    body is the single zstd frame the schema encoder writes (decoders see no change)."""
    b = BlockBatcher(node="n", next_seq=1, ifaces=dict, max_bytes=60_000, max_delay=10, level=-3)
    small, small2 = _block(3, 10), _block(4, 20)
    assert b.add_block(memoryview(small)) == []  # a partial block opens a gathered batch
    assert b.add_block(memoryview(small2)) == []
    full = _block(800, 1_000)  # ~64 KiB used of the 64 KiB block, more than maxBytes
    # the open batch closes first (it would overflow), then the full block is a batch alone
    gathered, alone = b.add_block(memoryview(full))
    assert gathered.count == 7 and alone.count == 800 and not b.pending
    for out, blocks in ((gathered, [small, small2]), (alone, [full])):
        got = decode_batch(out.value)
        assert got.header.codec == "zstd"
        ref = decode_batch(encode_block_batch(node="n", seq=out.seq, blocks=blocks, ifaces={}))
        assert [(p.ts_ns, bytes(p.data)) for p in got.packets] == \
            [(p.ts_ns, bytes(p.data)) for p in ref.packets]
        # One frame, which states its size: a second frame after it would be bytes the
        # one-shot decoder never reads.
        body = out.parts[1]
        assert len(out.parts) == 2 and body[:4] == b"\x28\xb5\x2f\xfd"
        assert zstandard.frame_content_size(body) == out.raw_bytes
    # The buffer is reused: a second gathered batch carries only its own blocks.
    assert b.add_block(memoryview(small2)) == []
    again = b.close()
    assert again is not None and again.count == 4
    assert [bytes(p.data) for p in decode_batch(again.value).packets] == \
        [bytes(p.data) for p in decode_batch(encode_block_batch(
            node="n", seq=again.seq, blocks=[small2], ifaces={})).packets]


def test_batcher_stores_incompressible_batches_plain() -> None:
    b = BlockBatcher(node="n", next_seq=1, ifaces=dict, max_bytes=1, max_delay=10, level=1)
    rnd = [build_block([(i * 100 + j, 1000, 3, 0, os.urandom(1000)) for j in range(10)])
           for i in range(3)]
    [first] = b.add_block(memoryview(rnd[0]))
    [second] = b.add_block(memoryview(rnd[1]))
    assert decode_batch(first.value).header.codec == "zstd"
    h2 = decode_batch(second.value)
    assert h2.header.codec == "none" and len(h2.packets) == 10 and b.plain_batches == 1
    # a plain one-block batch is one value in a buffer with room for the Kafka request
    (value,) = second.parts
    assert isinstance(value, memoryview) and isinstance(value.obj, Framed)
    assert bytes(value) == second.value and value.obj.end == len(value.obj) - 1
    # a header too big for the room (thousands of interfaces) goes in front as its own piece
    many = {i: f"veth{i:010d}" for i in range(2000)}
    big = BlockBatcher(node="n", next_seq=1, ifaces=lambda: many, max_bytes=1, max_delay=10, level=1)
    big._plain_left = 1  # as after an incompressible batch
    [third] = big.add_block(memoryview(rnd[2]))
    head, body = third.parts
    assert len(head) > Framed.ROOM and isinstance(body, memoryview) and len(body) == third.raw_bytes
    got = decode_batch(third.value)
    assert got.header.codec == "none" and got.header.ifaces == many
    assert [bytes(p.data) for p in got.packets] == [bytes(p.data) for p in decode_batch(
        encode_block_batch(node="n", seq=1, blocks=[rnd[2]], ifaces=many)).packets]
    assert [bytes(p.data) for p in h2.packets] == [bytes(p.data) for p in
                                                    decode_batch(encode_block_batch(
                                                        node="n", seq=2, blocks=[rnd[1]],
                                                        ifaces={})).packets]


def test_batcher_codec_none_never_compresses_and_equals_the_zstd_path() -> None:
    """capture.codec: none stores every batch plain, compressible traffic too, whether the
    batch is one full block (framed for the Kafka request) or gathered from partial ones;
    the packets decode to exactly what the zstd batcher's batches hold."""
    blocks = [_block(3, 10), _block(4, 20), _block(800, 1_000)]  # two partial, one full
    got: dict[str, list[ClosedBatch]] = {}
    for codec in ("none", "zstd"):
        b = BlockBatcher(node="n", next_seq=1, ifaces=dict, max_bytes=60_000, max_delay=10,
                         level=1, codec=codec)
        out = [c for blk in blocks for c in b.add_block(memoryview(blk))]
        tail = b.close()
        got[codec] = out + ([tail] if tail else [])
    assert [c.count for c in got["none"]] == [c.count for c in got["zstd"]] == [7, 800]
    plain = [decode_batch(c.value) for c in got["none"]]
    packed = [decode_batch(c.value) for c in got["zstd"]]
    assert [d.header.codec for d in plain] == ["none", "none"]
    assert [d.header.codec for d in packed] == ["zstd", "zstd"]
    assert [(p.ts_ns, bytes(p.data)) for d in plain for p in d.packets] == \
        [(p.ts_ns, bytes(p.data)) for d in packed for p in d.packets]
    # plain means plain: the body is the ring bytes, as long as the raw size
    assert all(c.size > c.raw_bytes for c in got["none"])
    assert all(c.size < c.raw_bytes // 2 for c in got["zstd"])  # zeros compress
    (value,) = got["none"][1].parts  # the full block: one framed value
    assert isinstance(value, memoryview) and isinstance(value.obj, Framed)


def test_batcher_refuses_an_unknown_codec() -> None:
    with pytest.raises(ValueError, match="zstd, none"):
        BlockBatcher(node="n", next_seq=1, ifaces=dict, max_bytes=1, max_delay=1, level=1,
                     codec="lz4")


def _batch(seq: int, size: int = 5000) -> ClosedBatch:
    value = encode_block_batch(node="n", seq=seq, blocks=[_block(2, seq * 10, os.urandom(size // 2))],
                               ifaces={3: "eth0"})
    return ClosedBatch(seq, 2, seq * 10, seq * 10 + 1, size, (value[:100], value[100:]))


def test_fifo_budget_loss_and_restart(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path, "n", budget=256 * 1024, segment_size=64 * 1024)
    assert fifo.segment_size == 64 * 1024 and fifo.next_seq == 1
    for seq in range(1, 11):
        fifo.append(_batch(seq))
    fifo.mark_acked(4)
    for seq in range(11, 121):
        fifo.append(_batch(seq))
        assert fifo.total_bytes <= 256 * 1024
    on_disk = read_fifo(tmp_path / "n")
    first = on_disk[0].header.seq
    assert first > 5 and [b.header.seq for b in on_disk] == list(range(first, 121))
    assert fifo.lost_batches == first - 1 - 4  # everything recycled above acked_seq
    got = fifo.read(first)
    assert fifo.read(first - 1) is None and got is not None
    assert decode_batch(b"".join(got[1])).header.seq == first
    fifo.close()
    # a crash mid-write leaves half a frame: restart cuts it and continues the sequence
    last_seg = sorted((tmp_path / "n").glob("*.rcsg"))[-1]
    with open(last_seg, "ab") as fh:
        fh.write(b"\x10\x00\x00\x00garbage")
    again = Fifo(tmp_path, "n", budget=256 * 1024, segment_size=64 * 1024)
    assert again.next_seq == 121 and again.acked_seq == 4 and again.lost_batches == fifo.lost_batches
    again.append(_batch(121))
    assert [b.header.seq for b in read_fifo(tmp_path / "n")][-2:] == [120, 121]
    state = json.loads((tmp_path / "n" / "shipped.json").read_text())
    assert state["acked_seq"] == 4
    with pytest.raises(RawcapError, match="in use by another capture agent"):
        Fifo(tmp_path, "n", budget=1 << 20, segment_size=1 << 16)
    with pytest.raises(RawcapError, match="expected batch 122"):
        again.append(_batch(500))
    again.close()


def test_fifo_splits_this_runs_packets_exactly(tmp_path: Path) -> None:
    """Every packet of this run is delivered, lost or pending, exactly once: batches
    recycled while a send carries them wait for that send (acknowledged: delivered; failed:
    lost); batches of an earlier run count in none of this run's numbers."""
    old = Fifo(tmp_path, "n", budget=256 * 1024, segment_size=64 * 1024)
    for seq in range(1, 6):
        old.append(_batch(seq))
    old.close()
    fifo = Fifo(tmp_path, "n", budget=256 * 1024, segment_size=64 * 1024)
    assert fifo.run_first_seq == 6
    for seq in range(6, 31):
        fifo.append(_batch(seq))
    fifo.mark_acked(15)  # 1..5 (the earlier run's) and 6..15: 10 batches of this run
    assert (fifo.run_shipped_batches, fifo.run_shipped_packets) == (10, 20)
    fifo.in_flight_to = 25  # a send carries 16..25
    for seq in range(31, 201):  # the budget holds ~96 of these: the oldest get recycled
        fifo.append(_batch(seq))
    first = read_fifo(tmp_path / "n")[0].header.seq
    assert first > 40
    # 26..first-1 were lost when recycled; 16..25 wait for their send
    assert fifo.run_lost_batches == first - 26
    fifo.mark_acked(20)  # the send's first part came through: 16..20 delivered
    assert (fifo.run_shipped_batches, fifo.run_shipped_packets) == (15, 30)
    fifo.abandon_in_flight()  # the rest of it failed: 21..25 are lost after all
    assert fifo.run_lost_batches == first - 26 + 5 and fifo.in_flight_to == 20
    assert fifo.run_pending() == (200 - first + 1, 2 * (200 - first + 1))
    shipped, lost, (_, pending) = fifo.run_shipped_packets, fifo.run_lost_packets, fifo.run_pending()
    assert shipped + lost + pending == 2 * (200 - 6 + 1)
    # the cumulative counters (shipped.json) count the same loss
    assert fifo.lost_batches == fifo.run_lost_batches
    fifo.close()


def test_fifo_frame_header_matches_the_stream_format() -> None:
    """The FIFO frames its pieces with schemas' crc32; the bytes must be schemas' framing."""
    from schemas.stream import FRAME, crc32, frame_batch

    for value in (b"", b"123456789", os.urandom(3 << 20)):
        assert FRAME.pack(len(value), crc32(value)) == frame_batch(value)


def test_ack_state_window_fits_the_resend_check() -> None:
    """Acks not yet in shipped.json + batches in flight must fit in the tail the restarted
    shipper reads back from Kafka, or a crash could resend (duplicate) batches."""
    from capture import _fifo, _shipper

    assert _fifo.STATE_EVERY_BATCHES + _shipper.IN_FLIGHT < _shipper._TAIL


def test_fifo_state_file_is_rate_limited_and_synced(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path, "n", budget=1 << 20, segment_size=1 << 16)
    for seq in range(1, 6):
        fifo.append(_batch(seq))
    fifo.write_state()
    fifo.mark_acked(1)
    fifo.mark_acked(2)
    on_disk = json.loads((tmp_path / "n" / "shipped.json").read_text())["acked_seq"]
    assert fifo.acked_seq == 2 and on_disk == 0  # within the window: not rewritten yet
    fifo.sync_state()  # what the agent's stats loop does every second
    assert json.loads((tmp_path / "n" / "shipped.json").read_text())["acked_seq"] == 2
    fifo.close()


def test_fifo_sequence_survives_an_emptied_buffer(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path, "n", budget=1 << 20, segment_size=1 << 16)
    for seq in range(1, 4):
        fifo.append(_batch(seq))
    fifo.mark_acked(3)
    fifo.close()
    for seg in (tmp_path / "n").glob("*.rcsg"):
        seg.unlink()
    assert Fifo(tmp_path, "n", budget=1 << 20, segment_size=1 << 16).next_seq == 4


def _held_fifo(tmp_path: Path, clock: _Clock, hold_bytes: int = 1 << 20) -> Fifo:
    fifo = Fifo(tmp_path, "n", budget=1 << 20, segment_size=1 << 16, hold_bytes=hold_bytes,
                hold_for=2.0, clock=clock)
    fifo.holding = True  # what a connected shipper sets
    return fifo


def _on_disk(tmp_path: Path) -> list[int]:
    return [b.header.seq for b in read_fifo(tmp_path / "n")]


def test_fifo_holds_batches_in_memory_until_acked_or_old(tmp_path: Path) -> None:
    clock = _Clock()
    fifo = _held_fifo(tmp_path, clock)
    for seq in range(1, 6):
        fifo.append(_batch(seq))
    assert _on_disk(tmp_path) == [] and fifo.held_bytes > 0
    got = fifo.read(2)
    assert got is not None and decode_batch(b"".join(got[1])).header.seq == 2
    fifo.mark_acked(3)  # acknowledged while in memory: never written
    assert fifo.first_seq == 4 and fifo.read(3) is None
    clock.t = 1.9
    fifo.spill()
    assert _on_disk(tmp_path) == []
    clock.t = 2.1  # Kafka did not acknowledge 4 and 5 in time
    fifo.spill()
    assert _on_disk(tmp_path) == [4, 5] and fifo.held_bytes == 0
    got = fifo.read(5)
    assert got is not None and decode_batch(b"".join(got[1])).header.seq == 5
    # the numbers memory may use were reserved before memory used them
    assert json.loads((tmp_path / "n" / "shipped.json").read_text())["reserved_seq"] >= 5
    fifo.close()
    state = json.loads((tmp_path / "n" / "shipped.json").read_text())
    assert state["reserved_seq"] == 5 and state["acked_seq"] == 3
    again = Fifo(tmp_path, "n", budget=1 << 20, segment_size=1 << 16)
    assert again.next_seq == 6 and again.first_seq == 4
    again.close()


def test_fifo_writes_a_framed_value(tmp_path: Path) -> None:
    """A plain one-block batch arrives as one memoryview into a Framed buffer: the FIFO's
    crc and writev take it as it is, and the segment holds the same bytes."""
    value = _batch(1).value
    framed = Framed.around(memoryview(value[40:]))
    assert framed.prepend(value[:40])
    batch = ClosedBatch(1, 2, 10, 11, 5000, (framed.value(),))
    fifo = _held_fifo(tmp_path, _Clock())
    fifo.append(batch)
    fifo.spill(everything=True)
    fifo.append(ClosedBatch(2, 2, 20, 21, 5000, (memoryview(_batch(2).value),)))  # read-only view
    fifo.close()
    on_disk = read_fifo(tmp_path / "n")
    assert [b.header.seq for b in on_disk] == [1, 2]
    assert [bytes(p.data) for p in on_disk[0].packets] == [bytes(p.data) for p in decode_batch(value).packets]
    from schemas.stream import crc32

    assert crc32(framed.value()) == crc32(bytes(framed.value())) == zlib.crc32(value)


def test_fifo_spills_oldest_over_the_memory_bound_and_without_a_shipper(tmp_path: Path) -> None:
    clock = _Clock()
    room = 2 * _batch(1).size + 100  # two batches fit in memory
    fifo = _held_fifo(tmp_path, clock, hold_bytes=room)
    for seq in range(1, 5):
        fifo.append(_batch(seq))
    assert _on_disk(tmp_path) == [1, 2] and fifo.held_bytes <= room
    fifo.holding = False  # the shipper lost Kafka: everything goes to disk, in order
    fifo.append(_batch(5))
    assert _on_disk(tmp_path) == [1, 2, 3, 4, 5] and fifo.held_bytes == 0
    fifo.close()


def test_fifo_restart_after_a_crash_skips_what_memory_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Batches only in memory die with the process; the restart must not reuse their
    numbers (Kafka may hold some of them) and must leave a gap consumers can see."""
    clock = _Clock()
    fifo = _held_fifo(tmp_path, clock)
    for seq in range(1, 4):
        fifo.append(_batch(seq))
    fifo.mark_acked(1)
    fifo.sync_state()
    os.close(fifo._lockfd)  # the process died: no close(), no spill
    with caplog.at_level("WARNING", logger="rawcap.capture"):
        again = Fifo(tmp_path, "n", budget=1 << 20, segment_size=1 << 16)
    assert again.next_seq > 3 and _on_disk(tmp_path) == []
    assert "stopped without flushing" in caplog.text and f"2..{again.next_seq - 1}" in caplog.text
    again.close()


@pytest.mark.parametrize(("path", "cid", "runtime", "pod"), [
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_1111_2222_3333_444455556666"
     ".slice/cri-containerd-" + "a" * 64 + ".scope", "a" * 64, "containerd",
     "0a1b2c3d-1111-2222-3333-444455556666"),
    ("/kubepods.slice/kubepods-pod0a1b2c3d_1111_2222_3333_444455556666.slice/crio-" + "b" * 64 + ".scope",
     "b" * 64, "cri-o", "0a1b2c3d-1111-2222-3333-444455556666"),
    ("/docker/" + "c" * 64, "c" * 64, "docker", ""),
    ("/system.slice/docker-" + "d" * 64 + ".scope", "d" * 64, "docker", ""),
    ("/kubepods/besteffort/pod0a1b2c3d-1111-2222-3333-444455556666/" + "e" * 64, "e" * 64,
     "containerd", "0a1b2c3d-1111-2222-3333-444455556666"),
    ("/user.slice/user-0.slice/session-1.scope", "", "", ""),
    ("/", "", "", ""),
])
def test_parse_container(path: str, cid: str, runtime: str, pod: str) -> None:
    assert parse_container(path) == (cid, runtime, pod)


def test_proc_record_roundtrip_and_validation() -> None:
    r = ProcRecord(ts_ns=1, node="n", kind="tcp", pid=2, tid=3, comm="curl", cgroup_id=4,
                   cgroup_path="/x", proto=6, saddr="10.0.0.1", sport=5, daddr="fd00::1", dport=80)
    assert decode_proc(r.encode()) == r
    assert len(r.encode()) < 120
    with pytest.raises(ValueError):
        ProcRecord(ts_ns=1, node="n", kind="nope", pid=1, tid=1, comm="", cgroup_id=0)
    with pytest.raises(ValueError):
        decode_proc(b"\x01")


async def test_in_flight_window_acks_in_order_and_keeps_a_failure() -> None:
    """Acknowledgements move acked_seq only across a run of successes from the oldest send,
    however the futures complete; a failed send stays at the head for the send loop to
    raise, and a closed window ignores late callbacks (a producer being torn down)."""
    import asyncio

    from aiokafka.errors import KafkaError

    from capture._shipper import _InFlight

    class Shipper:
        def __init__(self) -> None:
            self.acked: list[int] = []
            self.wakes = 0

        def _acked(self, seq: int, count: int = 1) -> None:
            self.acked.append(seq)

        def notify(self) -> None:
            self.wakes += 1

    loop = asyncio.get_running_loop()
    ship = Shipper()
    futs = [loop.create_future() for _ in range(8)]
    window = _InFlight(ship, limit=len(futs))  # type: ignore[arg-type]
    for seq, fut in enumerate(futs, 1):
        window.add(seq, fut)
    assert window.full
    futs[1].set_result(None)
    futs[2].set_result(None)
    await asyncio.sleep(0)
    assert ship.acked == [] and window.full  # 1 is still out: nothing moves
    futs[0].set_result(None)
    await asyncio.sleep(0)
    assert ship.acked == [1, 2, 3] and not window.full and ship.wakes >= 1
    window.raise_failure()  # the head (4) is pending: nothing to raise
    futs[3].set_exception(KafkaError("broker gone"))
    futs[4].set_result(None)
    await asyncio.sleep(0)
    assert ship.acked == [1, 2, 3]
    with pytest.raises(KafkaError, match="broker gone"):
        window.raise_failure()
    window.close()
    assert not window.pending
    other = _InFlight(ship)
    late = loop.create_future()
    other.add(9, late)
    other.close()  # the send loop ended: an ack arriving now changes nothing
    late.set_result(None)
    await asyncio.sleep(0)
    assert ship.acked == [1, 2, 3]
