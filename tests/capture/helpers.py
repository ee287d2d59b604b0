"""Shared helpers for capture tests: run the agent in a namespace, read its FIFO, traffic."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from rawcap.packet import parse_l4
from rawcap.pcap import read_capture
from schemas import Batch, decode_batch
from schemas.stream import split_frames
from tests.netns import NetNs

RAWCAP = str(Path(sys.executable).with_name("rawcap"))
TRAFFIC = str(Path(__file__).with_name("traffic.py"))
PY = sys.executable


class Proc:
    """A process inside a namespace whose stderr is collected line by line."""

    def __init__(self, argv: list[str], ns: NetNs | None = None,
                 env: dict[str, str] | None = None, prefix: list[str] | None = None) -> None:
        cmd = [*(prefix or []), *argv]
        if ns is not None:
            cmd = ns.cmd(cmd)
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.out: list[str] = []
        self._t = threading.Thread(target=self._pump, args=(self.p.stderr, self.lines), daemon=True)
        self._t.start()
        self._t2 = threading.Thread(target=self._pump, args=(self.p.stdout, self.out), daemon=True)
        self._t2.start()

    @staticmethod
    def _pump(stream: IO[bytes], into: list[str]) -> None:
        for raw in stream:
            into.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, needle: str, timeout: float = 60, *, stdout: bool = False) -> None:
        deadline = time.monotonic() + timeout
        lines = self.out if stdout else self.lines
        while time.monotonic() < deadline:
            if any(needle in line for line in lines):
                return
            if self.p.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"exited {self.p.returncode} before {needle!r}:\n" + self.text)
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout}s:\n" + self.text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self._t.join(5)
        self._t2.join(5)
        return rc

    def summary(self) -> dict[str, str]:
        for line in reversed(self.lines):
            if line.startswith("capture summary:"):
                return dict(re.findall(r"(\w+)=(\S+)", line))
        raise AssertionError("no summary line:\n" + self.text)


def agent(ns: NetNs, *args: str, env: dict[str, str] | None = None) -> Proc:
    p = Proc([RAWCAP, "capture", *args], ns=ns, env=env)
    p.wait_for("capture running")
    return p


def read_fifo(node_dir: Path) -> list[Batch]:
    batches: list[Batch] = []
    for seg in sorted(node_dir.glob("*.rcsg")):
        frames, _ = split_frames(seg.read_bytes(), name=str(seg))
        batches.extend(decode_batch(bytes(f.value)) for f in frames)
    return batches


def fifo_last_seq(node_dir: Path) -> int:
    """Highest batch sequence on disk right now (segments may be mid-write)."""
    from schemas import decode_header

    last = 0
    for seg in sorted(node_dir.glob("*.rcsg")):
        frames, _ = split_frames(seg.read_bytes(), final=False, name=str(seg))
        if frames:
            last = max(last, decode_header(bytes(frames[-1].value))[0].seq)
    return last


async def kafka_records(bootstrap: str, node: str) -> list[tuple[int, bytes]]:
    """(Kafka timestamp, value) of every record of ``node`` in rawcap.packets, in order."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.topics import PACKETS

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    await c.start()
    try:
        md = await c._client.fetch_all_metadata()
        parts = md.partitions_for_topic(PACKETS) or set()
        assert parts, "rawcap.packets does not exist"
        tps = [TopicPartition(PACKETS, p) for p in parts]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: list[tuple[int, bytes]] = []
        while [tp for tp in tps if await c.position(tp) < end[tp]]:
            got = await c.getmany(timeout_ms=1000, max_records=1000)
            for recs in got.values():
                out.extend((r.timestamp, r.value) for r in recs if r.key == node.encode() and r.value)
        return out
    finally:
        await c.stop()


def is_l4(data: bytes) -> bool:
    return parse_l4(data) is not None


def pcap_packets(path: Path) -> list[bytes]:
    out: list[bytes] = []
    with open(path, "rb") as fh:
        for chunk in read_capture(fh, name=str(path)):
            out.extend(bytes(r.data) for r in chunk)
    return out
