"""The compiled EPB converter (``rawcap.pcap._fastpcap``) against its pure-Python reference
(``rawcap.pcap._convert.epbs_py``): byte-identical EPBs for random batches of both body layouts,
window edges and VLAN frames; every truncation and random corruption fails the same way in
both; the converter that inflates the zstd frame itself (``epbs_zstd``) gives what
``decompress_body`` + the reference give, or declines (None) and leaves the verdict to
them; and ``rawcap pcap export`` through Kafka writes the same file with and without the
extension (test hook ``no-fastpcap``) and its inflating path (``no-fastzstd``)."""

from __future__ import annotations

import dataclasses
import functools
import struct
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forensics._fastexport import fast_batch
from forensics._sinks import PcapngSink
from rawcap.pcap import _convert as _epbs
from rawcap.pcap._convert import epbs_c, epbs_py, epbs_zstd
from rawcap.timeparse import format_ns
from schemas import (
    BatchHeader,
    Packet,
    decode_header,
    decompress_body,
    encode_batch,
    encode_block_batch,
    encode_header,
)
from schemas.errors import BatchError, RecordOverrun
from schemas.tpacket import FRAME_HDR, build_block

from .helpers import rawcap, records, wireshark_warnings
from .test_kafka import _produce


def test_extension_is_built() -> None:
    """``pip install -e .`` builds it; these tests fail (never skip) without it."""
    assert _epbs._c is not None


# -- building bodies -----------------------------------------------------------------------
_VLAN_VALID, _TPID_VALID = 1 << 4, 1 << 6

pkt_st = st.tuples(
    st.integers(0, 2**40),  # ts offset
    st.binary(min_size=0, max_size=80),
    st.integers(0, 40),  # extra origlen
    st.sampled_from([1, 2, 7, -3]),  # ifindex
    st.integers(0, 4),  # pkttype
    st.integers(0, 3),  # vlan: 0 none, 1 default TPID, 2 TPID valid, 3 TPID valid but 0
    st.integers(0, 0xFFFFFFFF),  # tci (upper bits must be dropped)
)


def _rec_body(pkts: list[Any], base: int) -> tuple[BatchHeader, bytes]:
    packets = [Packet(base + t, len(d), len(d) + x, ifx, pt, d) for t, d, x, ifx, pt, _v, _c in pkts]
    value = encode_batch(node="n", seq=1, packets=packets, ifaces={1: "eth0", 2: "lo"})
    h, off = decode_header(value)
    return h, bytes(decompress_body(h, memoryview(value)[off:]))


def _vlanize(block: bytes, vlans: list[tuple[int, int]]) -> bytes:
    """Set tp_status / tp_vlan_tci / tp_vlan_tpid of each frame as the kernel would."""
    b = bytearray(block)
    frame = struct.unpack_from("<I", b, 16)[0]
    for kind, tci in vlans:
        if kind:
            status = 1 | _VLAN_VALID | (_TPID_VALID if kind >= 2 else 0)
            tpid = 0x88A8 if kind == 2 else 0
            struct.pack_into("<I", b, frame + 20, status)
            struct.pack_into("<IH", b, frame + 32, tci, tpid)
        nxt = FRAME_HDR.unpack_from(b, frame)[0]
        frame += nxt
    return bytes(b)


def _block_body(pkts: list[Any], base: int, blocks: int) -> tuple[BatchHeader, bytes]:
    per = max(1, -(-len(pkts) // max(blocks, 1)))
    raw = []
    for i in range(0, len(pkts), per):
        chunk = pkts[i : i + per]
        frames = [(base + t, len(d) + x, ifx, pt, d) for t, d, x, ifx, pt, _v, _c in chunk]
        raw.append(_vlanize(build_block(frames, seq=i), [(v, c) for *_r, v, c in chunk]))
    value = encode_block_batch(node="n", seq=1, blocks=raw, ifaces={1: "eth0"})
    h, off = decode_header(value)
    return h, bytes(decompress_body(h, memoryview(value)[off:]))


class _Resolver:
    """Hands out ids in first-use order and records the calls (both twins must agree)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, ifindex: int) -> tuple[int, bytes]:
        self.calls.append(ifindex)
        return len(self.calls) - 1, b"IDB!" + struct.pack("<i", ifindex)


def _both(h: BatchHeader, body: bytes, lo: int, hi: int) -> tuple[Any, Any]:
    """(result or exception type, resolve calls) of each twin."""
    out = []
    for f in (epbs_py, epbs_c):
        r = _Resolver()
        try:
            res: Any = f(h, body, lo, hi, r)
        except BatchError as exc:
            res = type(exc)
        out.append((res, r.calls))
    return out[0], out[1]


def _window(draw: Any, ts: list[int]) -> tuple[int, int]:
    cands = [0, -5, 2**64, 2**70, *ts, *(t + 1 for t in ts)]
    lo, hi = draw(st.sampled_from(cands)), draw(st.sampled_from(cands))
    return lo, hi


# -- differential --------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pkts=st.lists(pkt_st, max_size=30), base=st.sampled_from([0, 1_700_000_000 * 10**9]), data=st.data())
def test_rec_bodies_same_bytes(pkts: list[Any], base: int, data: Any) -> None:
    h, body = _rec_body(pkts, base)
    lo, hi = _window(data.draw, [base + p[0] for p in pkts])
    py, c = _both(h, body, lo, hi)
    assert py == c
    assert not isinstance(py[0], type), py
    # With the whole window, every packet comes out: 32 + caplen + pad + 4 bytes each.
    _out, n, nbytes = epbs_c(h, body, 0, 2**64, _Resolver())
    assert n == len(pkts) and nbytes == sum(len(p[1]) for p in pkts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pkts=st.lists(pkt_st, min_size=1, max_size=30),
    blocks=st.integers(1, 4),
    base=st.sampled_from([0, 1_700_000_000 * 10**9]),
    data=st.data(),
)
def test_tpacket3_bodies_same_bytes(pkts: list[Any], blocks: int, base: int, data: Any) -> None:
    base -= base % 10**9  # tp_sec/tp_nsec: whole seconds plus a u32 of nanoseconds
    pkts = [(t % 2**31 * 10**9 // 2**20, *rest) for t, *rest in pkts]
    h, body = _block_body(pkts, base, blocks)
    lo, hi = _window(data.draw, [base + p[0] for p in pkts])
    py, c = _both(h, body, lo, hi)
    assert py == c
    assert not isinstance(py[0], type), py


def test_vlan_tag_reinserted() -> None:
    frame = bytes(range(6)) * 2 + b"\x08\x00" + b"payload!"
    pk = [(5, frame, 0, 1, 0, 2, 0xABCD1234), (6, frame, 0, 1, 0, 1, 7), (7, frame[:11], 0, 1, 0, 1, 7)]
    h, body = _block_body(pk, 10**9, 1)
    out, n, nbytes = epbs_c(h, body, 0, 2**64, _Resolver())
    assert (out, n, nbytes) == epbs_py(h, body, 0, 2**64, _Resolver())
    epb1 = out[8:]
    assert struct.unpack_from("<II", epb1, 20) == (len(frame) + 4, len(frame) + 4)
    assert epb1[28 : 28 + len(frame) + 4] == frame[:12] + b"\x88\xa8\x12\x34" + frame[12:]
    assert b"\x81\x00\x00\x07" in out  # default TPID, tci
    assert nbytes == 2 * (len(frame) + 4) + 11  # too short for a tag: left as it is


def test_epb_layout_matches_pcapng_writer() -> None:
    from rawcap.pcap import PcapngWriter

    data = [b"x" * n for n in (0, 1, 5, 60)]
    pk = [(1000 * i + 2**33, d, 3, 2, 0, 0, 0) for i, d in enumerate(data)]
    h, body = _rec_body(pk, 0)
    out, _n, _b = epbs_c(h, body, 0, 2**64, lambda _i: (0, b""))
    ref = PcapngWriter.packets(0, [(2**33 + 1000 * i, len(d), len(d) + 3, d) for i, d in enumerate(data)])
    assert out == b"".join(ref)


# -- corrupt input -------------------------------------------------------------------------
def _sample_bodies() -> list[tuple[BatchHeader, bytes]]:
    pk = [(i * 1000, bytes([i]) * (i * 7 % 61), 0, 1 + i % 2, 0, i % 3, i) for i in range(12)]
    return [_rec_body(pk, 10**18), _block_body(pk, 10**18, 3)]


@pytest.mark.parametrize("which", [0, 1], ids=["rec", "tpacket3"])
def test_every_truncation_fails_cleanly(which: int) -> None:
    h, body = _sample_bodies()[which]
    for cut in range(len(body)):
        py, c = _both(h, body[:cut], 0, 2**64)
        assert py == c and py[0] is RecordOverrun, cut


@pytest.mark.parametrize("which", [0, 1], ids=["rec", "tpacket3"])
def test_wrong_counts_fail_cleanly(which: int) -> None:
    h, body = _sample_bodies()[which]
    for count in (-1, 0, h.count - 1, h.count + 1, 2**63, 2**64 + 5):
        py, c = _both(dataclasses.replace(h, count=count), body, 0, 2**64)
        assert py == c and py[0] is RecordOverrun, count
    with pytest.raises(BatchError):
        epbs_c(dataclasses.replace(h, body="nope"), body, 0, 2**64, _Resolver())


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, 1), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4)
)
def test_corrupted_bodies_agree(which: int, flips: list[tuple[int, int]]) -> None:
    h, body = _sample_bodies()[which]
    b = bytearray(body)
    for pos, x in flips:
        b[pos % len(b)] ^= x
    py, c = _both(h, bytes(b), 0, 2**64)
    assert py == c


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, 1), junk=st.binary(max_size=400), count=st.integers(-2, 6))
def test_random_bodies_agree(which: int, junk: bytes, count: int) -> None:
    h = dataclasses.replace(_sample_bodies()[which][0], count=count)
    py, c = _both(h, junk, 0, 2**64)
    assert py == c


def test_resolve_errors_propagate() -> None:
    h, body = _sample_bodies()[0]

    def bad(_i: int) -> tuple[int, bytes]:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        epbs_c(h, body, 0, 2**64, bad)
    with pytest.raises(TypeError):
        epbs_c(h, body, 0, 2**64, lambda _i: 3)  # type: ignore[arg-type,return-value]


# -- inflating inside the converter ----------------------------------------------------------
def test_libzstd_is_found() -> None:
    """libzstd.so.1 is on every machine rawcap runs on (zstandard's wheels aside, it is a
    dependency of the base system); without it the export only decompresses in Python."""
    assert _epbs.FAST_ZSTD and _epbs._c.zstd_available()


def _zframe(h: BatchHeader, body: bytes, **kw: Any) -> tuple[BatchHeader, bytes]:
    import zstandard

    frame = zstandard.ZstdCompressor(level=kw.pop("level", -3), write_checksum=True, **kw).compress(body)
    return dataclasses.replace(h, codec="zstd", body_len=len(body)), frame


def _via_python(h: BatchHeader, frame: bytes, lo: int, hi: int) -> tuple[Any, Any]:
    r = _Resolver()
    try:
        res: Any = epbs_py(h, decompress_body(h, frame), lo, hi, r)
    except BatchError as exc:
        res = (type(exc), str(exc))
    return res, r.calls


def _via_zstd(h: BatchHeader, frame: bytes, lo: int, hi: int) -> tuple[Any, Any]:
    r = _Resolver()
    try:
        res: Any = epbs_zstd(h, frame, lo, hi, r)
    except BatchError as exc:
        res = (type(exc), str(exc))
    return res, r.calls


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pkts=st.lists(pkt_st, min_size=1, max_size=30),
    blocks=st.integers(0, 3),  # 0: rec layout
    level=st.sampled_from([-3, 1, 19]),
    data=st.data(),
)
def test_inflating_converter_same_bytes(pkts: list[Any], blocks: int, level: int, data: Any) -> None:
    base = 1_700_000_000 * 10**9
    h, frame = _zframe(*(_block_body(pkts, base, blocks) if blocks else _rec_body(pkts, base)), level=level)
    lo, hi = _window(data.draw, [base + p[0] for p in pkts])
    got = _via_zstd(h, frame, lo, hi)
    assert got[0] is not None
    assert got == _via_python(h, frame, lo, hi)


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, 1),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
    cut=st.integers(0, 3),
    count_delta=st.sampled_from([0, 0, -1, 1]),
)
def test_inflating_converter_declines_or_agrees(
    which: int, flips: list[tuple[int, int]], cut: int, count_delta: int
) -> None:
    """Corrupt frames, truncated frames, wrong counts: either the same result (EPBs or the
    same error) as decompressing first, or None."""
    h, frame = _zframe(*_sample_bodies()[which])
    b = bytearray(frame)
    for pos, x in flips:
        b[pos % len(b)] ^= x
    h = dataclasses.replace(h, count=h.count + count_delta)
    corrupt = bytes(b[: len(b) - cut])
    got = _via_zstd(h, corrupt, 0, 2**64)
    if got[0] is not None:
        assert got == _via_python(h, corrupt, 0, 2**64)


def test_inflating_converter_rejects_what_python_zstandard_rejects() -> None:
    """A flipped bit that libzstd 1.5.4 inflated (checksum verified) while python-zstandard's
    1.5.7 calls the frame corrupt: the C converter runs python-zstandard's release, so the
    batch is rejected with the same reason on both paths (found by the test above)."""
    h, frame = _zframe(*_sample_bodies()[0])
    b = bytearray(frame)
    b[17392 % len(b)] ^= 1
    want = _via_python(h, bytes(b), 0, 2**64)
    assert isinstance(want[0][0], type) and issubclass(want[0][0], BatchError)  # rejected
    got = _via_zstd(h, bytes(b), 0, 2**64)
    assert got == want or got[0] is None


def test_zstd_is_bound_only_at_python_zstandards_release() -> None:
    import zstandard

    major, minor, patch = zstandard.ZSTD_VERSION[:3]
    version = major * 10000 + minor * 100 + patch
    assert _epbs._c.zstd_available()
    assert _epbs._c.zstd_open("libzstd.so.1", version + 1) is False  # another release: refused
    assert _epbs._c.zstd_open("no-such-libzstd.so", version) is True  # bound already, that release


def test_inflating_converter_declines_what_is_not_one_exact_frame() -> None:
    import zstandard

    h, frame = _zframe(*_sample_bodies()[0])
    body = decompress_body(h, frame)
    half = len(body) // 2
    two = zstandard.ZstdCompressor().compress(body[:half]) + zstandard.ZstdCompressor().compress(body[half:])
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"skip" + frame
    for h2, f2 in [
        (h, frame + b"trailing junk"),
        (h, two),  # the Python path reads the first frame only: not the promised size
        (h, skippable),
        (dataclasses.replace(h, body_len=h.body_len + 1), frame),
        (dataclasses.replace(h, body_len=h.body_len - 1), frame),
        (dataclasses.replace(h, body_len=0), frame),
        (dataclasses.replace(h, codec="none"), frame),
        (dataclasses.replace(h, body="nope"), frame),
    ]:
        assert epbs_zstd(h2, f2, 0, 2**64, _Resolver()) is None
    # A frame without a checksum or a content size is still one exact frame.
    h3, plain = _zframe(*_sample_bodies()[1], level=3)
    bare = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False).compress(
        decompress_body(h3, plain)
    )
    assert _via_zstd(h3, bare, 0, 2**64) == _via_python(h3, bare, 0, 2**64)


def test_inflating_converter_from_threads() -> None:
    """The reused contexts and buffers are per call: threads converting at once agree."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [_zframe(*b) for b in _sample_bodies()] * 20
    want = [_via_python(h, f, 0, 2**64) for h, f in cases]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda hf: _via_zstd(hf[0], hf[1], 0, 2**64), cases))
    assert got == want


# -- the export sink -------------------------------------------------------------------------
@pytest.mark.parametrize("which", [0, 1], ids=["rec", "tpacket3"])
def test_sink_fast_batch_equals_python_sink(which: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches (the second adds an interface mid-batch): same IDBs, ids and EPBs as
    ``PcapngSink.batch`` without the extension."""
    import forensics._sinks as ex

    pk = [(i * 1000, bytes([i]) * (i * 5 % 70), 1, 1 if i < 9 else 1 + i % 3, 0, i % 3, i) for i in range(14)]
    bodies = [_rec_body(pk[:6], 10**18), _rec_body(pk[6:], 10**18)]
    if which:
        bodies = [_block_body(pk[:6], 10**18, 1), _block_body(pk[6:], 10**18, 2)]
    fast, slow = PcapngSink(0, False), PcapngSink(0, False)
    fparts: list[Any] = []
    sparts: list[Any] = []
    monkeypatch.setattr(ex, "_FAST", False)
    zsink = PcapngSink(0, False)
    zparts: list[Any] = []
    for h, body in bodies:
        fres = fast_batch(fast, h, body, fparts)
        sres = slow.batch(h, body, sparts)
        assert fres[:2] == sres[:2]
        zres = zsink.compressed_batch(*_zframe(h, body), zparts)
        assert zres is not None and zres[:2] == sres[:2]
    assert b"".join(fparts) == b"".join(sparts) == b"".join(zparts)
    assert fast.ids == slow.ids == zsink.ids


# -- end to end through Kafka ------------------------------------------------------------------
def _frame(i: int) -> bytes:
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + bytes(
        (i + k) % 256 for k in range(i % 97)
    )


async def test_export_equal_with_and_without_extension(
    kenv: dict[str, str], node_name: str, stack: Any, tmp_path: Path
) -> None:
    """Two nodes whose batches interleave (merge, whole batches and window edges), rec and
    tpacket3 bodies, VLAN frames, several interfaces, one corrupt body."""
    t0 = (time.time_ns() - 20 * 60 * 10**9) // 10**9 * 10**9
    a, b = node_name + "-a", node_name + "-b"
    vals: dict[str, list[tuple[bytes, int]]] = {a: [], b: []}
    for node, shift in ((a, 0), (b, 700_000_000)):
        for k in range(8):
            base = t0 + k * 10**9 + shift
            n = 40 + 13 * k
            pk = [
                (base + i * (500_000_000 // n), _frame(i + k), 0, 1 + (i * k) % 3, 0, (i + k) % 3, i * 77)
                for i in range(n)
            ]
            if k % 2:
                frames = [(t, len(d), ifx, pt, d) for t, d, _x, ifx, pt, _v, _c in pk]
                blocks = [
                    _vlanize(build_block(frames[j : j + 17]), [(p[5], p[6]) for p in pk[j : j + 17]])
                    for j in range(0, n, 17)
                ]
                value = encode_block_batch(
                    node=node, seq=k + 1, blocks=blocks, ifaces={1: "eth0", 2: "veth1"}
                )
            else:
                packets = [Packet(t, len(d), len(d), ifx, pt, d) for t, d, _x, ifx, pt, _v, _c in pk]
                value = encode_batch(node=node, seq=k + 1, packets=packets, ifaces={1: "eth0", 3: "lo"})
            if node == b and k == 4:  # a body that decompresses but overruns
                h, off = decode_header(value)
                value = encode_header(dataclasses.replace(h, count=h.count + 1)) + value[off:]
            vals[node].append((value, base))
    for node, vs in vals.items():
        await _produce(stack.bootstrap, vs, node)

    def iso(ns: int) -> str:
        return format_ns(ns)[:26] + "Z"

    outs: list[bytes] = []
    variants: tuple[tuple[str, dict[str, str]], ...] = (
        ("c", {}),
        ("py", {"RAWCAP_TEST_HOOKS": "no-fastpcap"}),
        ("c-no-zstd", {"RAWCAP_TEST_HOOKS": "no-fastzstd"}),
    )
    for label, extra in variants:
        for window in (
            ("--from", iso(t0 - 10**9), "--to", iso(t0 + 10 * 10**9)),
            ("--from", iso(t0 + 1_234_567_000), "--to", iso(t0 + 6_345_678_000)),
        ):
            out = tmp_path / f"{label}-{len(outs)}.pcapng"
            argv = ["pcap", "export", "--node", f"{a},{b}", *window, "-o", str(out)]
            p = await anyio.to_thread.run_sync(functools.partial(rawcap, *argv, env={**kenv, **extra}))
            assert p.returncode == 0, p.stderr.decode()
            assert "1 corrupt batch(es) skipped" in p.stderr.decode()
            outs.append(out.read_bytes())
    assert outs[0] == outs[2] == outs[4] and outs[1] == outs[3] == outs[5]
    full = tmp_path / "c-0.pcapng"
    assert not wireshark_warnings(full)
    recs = records(full)
    expected = sum(40 + 13 * k for k in range(8)) * 2 - (40 + 13 * 4)
    assert len(recs) == expected
    assert [r.ts_ns for r in recs] == sorted(r.ts_ns for r in recs)
    assert {r.iface for r in recs} >= {f"{a}:eth0", f"{a}:veth1", f"{b}:lo", f"{b}:2"}


@pytest.mark.parametrize("fast", [True, False])
def test_a_corrupt_batch_does_not_swallow_the_idb_of_its_new_interface(
    fast: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch to use an interface is corrupt (its body overruns after the first
    packet): its EPBs and that interface's IDB are dropped together, and the next good batch
    on the interface describes it again, so the file declares every interface it uses."""
    import forensics._sinks as ex

    monkeypatch.setattr(ex, "_FAST", fast and ex._FAST)
    packets = [Packet(10**18 + i, 60, 60, 5, 0, _frame(i + 3).ljust(60, b"\0")) for i in range(4)]
    good = encode_batch(node="n", seq=2, packets=packets, ifaces={5: "eth9"})
    h, off = decode_header(good)
    bad_header = dataclasses.replace(h, seq=1, count=h.count + 1)
    sink = PcapngSink(snaplen=0, comment_node=False)
    parts: list[Any] = [sink.header()]
    for header, value in ((bad_header, good), (h, good)):
        mark = len(parts)
        sink.begin_batch()
        try:
            sink.batch(header, decompress_body(header, memoryview(value)[off:]), parts)
        except BatchError:
            del parts[mark:]
            sink.forget_batch()
    out = tmp_path / "x.pcapng"
    out.write_bytes(b"".join(bytes(p) for p in parts))
    assert not wireshark_warnings(out)
    recs = records(out)
    assert [r.iface for r in recs] == ["n:eth9"] * 4
