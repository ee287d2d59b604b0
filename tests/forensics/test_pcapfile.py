"""pcap/pcapng reader and writers: tcpdump/editcap files in, tshark/capinfos as judges."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest

from rawcap.pcap import CaptureParser, PcapError, PcapngWriter, PcapWriter, TruncatedCapture, read_capture

DATA = Path(__file__).parent.parent / "data"


def _read(path: Path) -> list:
    with open(path, "rb") as fh:
        return [r for recs in read_capture(fh, chunk=4096) for r in recs]


def _tshark_times(path: Path) -> list[tuple[int, int, int]]:
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.cap_len",
            "-e",
            "frame.len",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        t, c, o = line.split("\t")
        sec, _, frac = t.partition(".")
        rows.append((int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]), int(c), int(o)))
    return rows


@pytest.mark.parametrize("name", ["small.pcap", "small.pcapng", "small_us.pcap"])
def test_reader_matches_tshark(name: str) -> None:
    recs = _read(DATA / name)
    assert [(r.ts_ns, r.caplen, r.origlen) for r in recs] == _tshark_times(DATA / name)
    assert all(r.linktype == 1 and len(r.data) == r.caplen for r in recs)


def test_pcap_and_pcapng_agree() -> None:
    a, b = _read(DATA / "small.pcap"), _read(DATA / "small.pcapng")
    assert [(r.ts_ns, bytes(r.data)) for r in a] == [(r.ts_ns, bytes(r.data)) for r in b]
    us = _read(DATA / "small_us.pcap")
    assert [r.ts_ns // 1000 for r in a] == [r.ts_ns // 1000 for r in us]


def test_truncated_file_yields_whole_packets_then_fails() -> None:
    got = []
    with open(DATA / "truncated.pcap", "rb") as fh, pytest.raises(TruncatedCapture, match="truncated"):
        for recs in read_capture(fh, name="truncated.pcap"):
            got.extend(recs)
    assert len(got) == 41  # what capinfos reads before the cut


@pytest.mark.parametrize("name", ["small.pcap", "small.pcapng"])
def test_byte_by_byte_feed(name: str) -> None:
    data = (DATA / name).read_bytes()
    parser = CaptureParser(name)
    out = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        out.extend(parser.records())
    parser.close()
    assert [bytes(r.data) for r in out] == [bytes(r.data) for r in _read(DATA / name)]


def test_not_a_capture() -> None:
    with pytest.raises(PcapError, match="not a pcap or pcapng"):
        list(read_capture(io.BytesIO(b"hello world, this is text" * 3)))
    with pytest.raises(PcapError, match="empty file"):
        list(read_capture(io.BytesIO(b"")))


def test_big_endian_pcap_and_pcapng() -> None:
    pkt = b"\x01" * 60
    be_pcap = (
        struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack(">IIII", 10, 5, 60, 70) + pkt
    )
    (r,) = [r for recs in read_capture(io.BytesIO(be_pcap)) for r in recs]
    assert (r.ts_ns, r.caplen, r.origlen) == (10_000_005_000, 60, 70)
    shb = struct.pack(">IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack(">I", 28)
    opts = struct.pack(">HH", 2, 4) + b"eth9" + struct.pack(">HH", 9, 1) + b"\x06\0\0\0" + b"\0\0\0\0"
    idb = struct.pack(">IIHHI", 1, 20 + len(opts), 1, 0, 0) + opts + struct.pack(">I", 20 + len(opts))
    epb = struct.pack(">IIIIIII", 6, 32 + 60, 0, 0, 1_000_000, 60, 60) + pkt + struct.pack(">I", 92)
    unknown = struct.pack(">II", 0x0BAD, 16) + b"\0\0\0\0" + struct.pack(">I", 16)
    (r,) = [r for recs in read_capture(io.BytesIO(shb + idb + unknown + epb)) for r in recs]
    assert (r.ts_ns, r.iface, r.caplen) == (1_000_000_000, "eth9", 60)


def _check_with_wireshark(path: Path, expect: int) -> None:
    info = subprocess.run(["capinfos", "-c", str(path)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert f"Number of packets:   {expect}" in info.stdout
    assert [ln for ln in info.stderr.splitlines() if "Running as user" not in ln and ln.strip()] == []
    ts = subprocess.run(["tshark", "-r", str(path)], capture_output=True, text=True)
    assert ts.returncode == 0
    assert [ln for ln in ts.stderr.splitlines() if "Running as user" not in ln and ln.strip()] == []


def test_writers_round_trip_through_tshark(tmp_path: Path) -> None:
    recs = _read(DATA / "small.pcap")
    w = PcapngWriter()
    i0, idb0 = w.interface("node-a:eth0")
    i1, idb1 = w.interface("node-b:eth0")
    half = len(recs) // 2
    rows = [(r.ts_ns, r.caplen, r.origlen, r.data) for r in recs]
    body = (
        w.header()
        + idb0
        + idb1
        + b"".join(w.packets(i0, rows[:half], b"node=node-a"))
        + b"".join(w.packets(i1, rows[half:]))
    )
    out = tmp_path / "out.pcapng"
    out.write_bytes(body)
    _check_with_wireshark(out, len(recs))
    assert _tshark_times(out) == _tshark_times(DATA / "small.pcap")
    back = _read(out)
    assert [r.iface for r in back] == ["node-a:eth0"] * half + ["node-b:eth0"] * (len(recs) - half)
    assert [bytes(r.data) for r in back] == [bytes(r.data) for r in recs]
    comments = subprocess.run(
        ["tshark", "-r", str(out), "-T", "fields", "-e", "frame.comment"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert comments[:half] == ["node=node-a"] * half and comments[half:] == [""] * (len(recs) - half)

    pw = PcapWriter()
    pcap = tmp_path / "out.pcap"
    pcap.write_bytes(pw.header() + b"".join(pw.packets(rows)))
    _check_with_wireshark(pcap, len(recs))
    assert _tshark_times(pcap) == _tshark_times(DATA / "small.pcap")
    assert (DATA / "small.pcap").read_bytes()[24:] == pcap.read_bytes()[24:]  # byte-identical records
