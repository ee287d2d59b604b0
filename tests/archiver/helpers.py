"""Archiver test helpers: run the real CLI, produce batches, read the archive back raw."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from rawcap.window import node_partition
from schemas import Packet, decode_header, encode_batch, topics
from schemas.errors import BatchError
from schemas.stream import split_frames

RAWCAP = [sys.executable, "-m", "rawcap.cli"]
PARTITIONS = 6
#: Variables a developer's shell might hold that would make these runs pass for the wrong reason.
_SCRUB = ("AWS_ALLOW_HTTP", "AWS_DEFAULT_REGION", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3", "RAWCAP_CONFIG")


def child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("RAWCAP_")}
    return {**base, **env}


def rawcap(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*RAWCAP, *args], capture_output=True, env=child_env(env), timeout=timeout)


class Proc:
    """A ``rawcap archive`` process whose stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            [*RAWCAP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(env)
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.p.stderr is not None
        for raw in self.p.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in list(self.lines))

    def wait_for(self, needle: str, timeout: float = 60, *, times: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(needle) >= times:
                return
            if self.p.poll() is not None:
                time.sleep(0.3)
                raise AssertionError(f"exited {self.p.returncode} before {needle!r}:\n{self.text[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout}s:\n{self.text[-4000:]}")

    def assigned(self) -> list[int]:
        """Partitions of the last assignment this instance logged."""
        for line in reversed(list(self.lines)):
            if "assigned partitions [" in line:
                return json.loads(line.split("assigned partitions ", 1)[1].split("]")[0] + "]")
        return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait(30)
        self._t.join(5)
        return rc

    def summary(self) -> dict[str, int]:
        for line in reversed(self.lines):
            if line.startswith("archive summary:"):
                return {k: int(v) for k, v in (kv.split("=") for kv in line.split(":", 1)[1].split())}
        raise AssertionError("no summary line:\n" + self.text[-4000:])


def nodes_on_partitions(prefix: str, count: int, partitions: int = PARTITIONS) -> list[str]:
    """``count`` node names whose keys land on ``count`` different partitions."""
    out: list[str] = []
    used: set[int] = set()
    i = 0
    while len(out) < count:
        name = f"{prefix}-n{i}"
        p = node_partition(name, partitions)
        if p not in used or len(used) == partitions:
            used.add(p)
            out.append(name)
        i += 1
    return out


def udp_packet(ts_ns: int, sport: int, dport: int, payload: bytes) -> Packet:
    ip_len = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + udp + payload
    return Packet(ts_ns, len(frame), len(frame), 1, 0, frame)


def make_batch(node: str, seq: int, t0: int, *, packets: int = 10, size: int = 200,
               spacing: int = 1000, rng: random.Random | None = None) -> bytes:
    rng = rng or random.Random(seq)
    pk = [udp_packet(t0 + i * spacing, 40000 + (seq + i) % 100, 53 if i % 3 == 0 else 8080,
                     rng.randbytes(size)) for i in range(packets)]
    return encode_batch(node=node, seq=seq, packets=pk, ifaces={1: "eth0"})


async def produce(bootstrap: str, items: Iterable[tuple[str, bytes]]) -> int:
    """Send ``(node, batch)`` in order (key = node, timestamp = first packet time)."""
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=9 << 20, linger_ms=2)
    await prod.start()
    n = 0
    try:
        futs = []
        for node, value in items:
            try:
                ts_ms = decode_header(value)[0].first_ns // 1_000_000
            except BatchError:  # a corrupt value on purpose
                ts_ms = time.time_ns() // 1_000_000
            futs.append(await prod.send(topics.PACKETS, value, key=node.encode(), timestamp_ms=ts_ms))
            n += 1
        for f in futs:
            await f
    finally:
        await prod.stop()
    return n


class ProducerThread:
    """A thread running :meth:`_run` (a producing loop that ends when ``_stop`` is set)
    beside the test; an error in it is raised by :meth:`stop`."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._t = threading.Thread(target=lambda: anyio.run(self._run), daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Any:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._t.join(60)
        if self.error is not None:
            raise self.error

    async def _run(self) -> None:
        raise NotImplementedError


class Traffic(ProducerThread):
    """A thread producing batches for some nodes at a steady rate until stopped; it
    remembers every (node, seq) Kafka acknowledged."""

    def __init__(self, bootstrap: str, nodes: list[str], rate: float = 20.0, size: int = 300) -> None:
        super().__init__()
        self.bootstrap, self.nodes, self.rate, self.size = bootstrap, nodes, rate, size
        self.sent: list[tuple[str, int]] = []

    async def _run(self) -> None:
        try:
            prod = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
            await prod.start()
            seq = 0
            rng = random.Random(7)
            try:
                while not self._stop.is_set():
                    seq += 1
                    futs = []
                    t0 = time.time_ns()
                    for k, node in enumerate(self.nodes):
                        v = make_batch(node, seq, t0 + k * 101, packets=4, size=self.size, rng=rng)
                        futs.append((node, await prod.send(topics.PACKETS, v, key=node.encode(),
                                                           timestamp_ms=t0 // 1_000_000)))
                    for node, f in futs:
                        await f
                        self.sent.append((node, seq))
                    await anyio.sleep(1 / self.rate)
            finally:
                await prod.stop()
        except BaseException as exc:  # reported by stop()
            self.error = exc


async def precommit_end(bootstrap: str, group: str, topic: str = topics.PACKETS) -> dict[int, int]:
    """Commit the current end offsets for ``group``: a fresh archiver then starts at the end
    of the topic (other tests' batches are not this test's business)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        await c._client._wait_on_metadata(topic)
        parts = sorted(c.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        end = await c.end_offsets(tps)
        await c.commit({tp: end[tp] for tp in tps})
        return {tp.partition: end[tp] for tp in tps}
    finally:
        await c.stop()


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets (the coordinator may still be starting on a fresh broker)."""
    from aiokafka.errors import GroupCoordinatorNotAvailableError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for attempt in range(60):
            try:
                offs = await admin.list_consumer_group_offsets(group)
                return {tp.partition: m.offset for tp, m in offs.items() if m.offset >= 0}
            except GroupCoordinatorNotAvailableError:
                if attempt == 59:
                    raise
                await anyio.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        await admin.close()


def s3_store(stack: Any, prefix: str) -> Any:
    from obstore.store import S3Store

    return S3Store(stack.bucket, prefix=prefix, **stack.s3_store_kwargs())


class Contents:
    """Everything under an archive prefix, read without rawcap's reader."""

    def __init__(self, store: Any) -> None:
        import obstore

        metas = [m for chunk in obstore.list(store) for m in chunk]
        self.paths = sorted(m["path"] for m in metas)
        self.data = [p for p in self.paths if p.endswith(".rcsg")]
        self.index = [p for p in self.paths if p.endswith(".json")]
        self.data_seqs: collections.Counter[tuple[str, int]] = collections.Counter()
        self.index_seqs: collections.Counter[tuple[str, int]] = collections.Counter()
        self.problems: list[str] = []
        blobs = {p: bytes(obstore.get(store, p).bytes()) for p in self.data}
        for p, blob in blobs.items():
            frames, _ = split_frames(blob, name=p)
            node = p.split("/")[0].removeprefix("node=")
            for f in frames:
                h, _ = decode_header(f.value)
                assert h.node == node, (p, h.node)
                self.data_seqs[(h.node, h.seq)] += 1
        for p in self.index:
            doc = json.loads(bytes(obstore.get(store, p).bytes()))
            if doc["object"] not in blobs:
                self.problems.append(f"index {p} names a missing object {doc['object']}")
                continue
            blob = blobs[doc["object"]]
            if len(blob) != doc["size"]:
                self.problems.append(f"index {p}: size {doc['size']} != {len(blob)}")
            for pos, length, seq, *_ in doc["frames"]:
                h, _ = decode_header(blob[pos + 8 : pos + length])
                if h.seq != seq:
                    self.problems.append(f"index {p}: frame at {pos} is seq {h.seq}, index says {seq}")
                self.index_seqs[(doc["node"], seq)] += 1
        indexed = {json.loads(bytes(obstore.get(store, p).bytes()))["object"] for p in self.index}
        self.orphans = [p for p in self.data if p not in indexed]

    def check_exactly_once(self, expected: Iterable[tuple[str, int]]) -> None:
        want = collections.Counter(expected)
        for name, got in (("index", self.index_seqs), ("data objects", self.data_seqs)):
            mine = collections.Counter({k: v for k, v in got.items() if k[0] in {n for n, _ in want}})
            missing = sorted(set(want) - set(mine))
            dupes = sorted(k for k, v in mine.items() if v > 1)
            extra = sorted(set(mine) - set(want))
            assert not missing and not dupes and not extra, (
                f"{name}: {len(missing)} missing {missing[:10]}, {len(dupes)} repeated {dupes[:10]}, "
                f"{len(extra)} unexpected {extra[:10]}"
            )
        assert not self.problems, self.problems[:10]
        assert not self.orphans, f"data objects without index: {self.orphans[:10]}"


async def end_offsets(bootstrap: str, topic: str = topics.PACKETS) -> dict[int, int]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await c.start()
    try:
        await c._client._wait_on_metadata(topic)
        parts = sorted(c.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        end = await c.end_offsets(tps)
        return {tp.partition: end[tp] for tp in tps}
    finally:
        await c.stop()


def wait_committed(bootstrap: str, group: str, partitions: Iterable[int], timeout: float = 90,
                   topic: str = topics.PACKETS) -> None:
    """Until the group has committed the end offset (as of now) of every partition given:
    everything produced so far is archived."""
    parts = set(partitions)
    end = anyio.run(end_offsets, bootstrap, topic)
    deadline = time.monotonic() + timeout
    while True:
        got = anyio.run(committed, bootstrap, group)
        behind = {p: (got.get(p), end[p]) for p in parts if got.get(p, -1) < end[p]}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group} did not catch up within {timeout}s: {behind}")
        time.sleep(0.5)


def records(path: Path) -> list[tuple[int, str | int, bytes]]:
    from rawcap.pcap import read_capture

    with open(path, "rb") as fh:
        return [(r.ts_ns, r.iface, bytes(r.data)) for recs in read_capture(fh) for r in recs]
