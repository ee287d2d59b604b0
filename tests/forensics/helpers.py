"""Shared helpers for forensics tests: run the real CLI, read captures back with tshark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from forensics import iter_batches
from rawcap.pcap import read_capture
from schemas.stream import frame_batch, stream_header

DATA = Path(__file__).parent.parent / "data"
RAWCAP = [str(Path(sys.executable).parent / "rawcap")]


def rawcap(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([*RAWCAP, *args], capture_output=True, env=full, input=stdin, timeout=timeout)


def records(path: Path) -> list:
    with open(path, "rb") as fh:
        return [r for recs in read_capture(fh) for r in recs]


def tshark_rows(path: Path | str, *fields: str, stdin: bytes | None = None) -> list[tuple[str, ...]]:
    argv = ["tshark", "-r", str(path), "-T", "fields"]
    for f in fields or ("frame.time_epoch", "frame.len", "frame.cap_len"):
        argv += ["-e", f]
    p = subprocess.run(argv, capture_output=True, input=stdin, check=True)
    return [tuple(line.split("\t")) for line in p.stdout.decode().splitlines()]


def wireshark_warnings(path: Path) -> list[str]:
    """Anything tshark or capinfos say on stderr (besides the root notice), plus failures."""
    out = []
    for argv in (["capinfos", str(path)], ["tshark", "-r", str(path)]):
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            out.append(f"{argv[0]} exit {p.returncode}")
        out += [ln for ln in p.stderr.splitlines() if ln.strip() and "Running as user" not in ln]
    return out


def write_buffer(root: Path, node: str, pcap: Path, segments: int = 1, iface: str = "eth0") -> int:
    """A node FIFO buffer made from a pcap, as the capture agent lays it out; returns packets."""
    with open(pcap, "rb") as fh:
        vals = [(v, n) for _, v, n, _ in iter_batches(read_capture(fh), node=node, default_iface=iface)]
    d = root / node
    d.mkdir(parents=True, exist_ok=True)
    per = max(1, len(vals) // segments)
    for i in range(0, len(vals), per):
        part = vals[i : i + per]
        (d / f"{i:08d}.rcsg").write_bytes(stream_header() + b"".join(frame_batch(v) + v for v, _ in part))
    return sum(n for _, n in vals)
