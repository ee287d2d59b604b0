"""rawcap.kafka._wire, the plaintext client of bounded reads: its requests are byte for byte
what aiokafka sends, it decodes what aiokafka decodes, its lookups agree with aiokafka's
consumer on a real broker, and whatever it cannot do leaves the read to aiokafka."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path
from time import time_ns
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.protocol import fetch as afetch
from aiokafka.protocol import metadata as ameta
from aiokafka.protocol import offset as aoffset

from rawcap.config import load_config
from rawcap.kafka import _codec as codec
from rawcap.kafka import _wire as wire
from rawcap.window import MARGIN_NS, WindowReader, start_kafka_lookup
from schemas import topics

from .helpers import RAWCAP, rawcap
from .test_kafka import _batches, _produce

TOPIC = topics.PACKETS


def test_murmur2_is_kafkas() -> None:
    rng = random.Random(7)
    keys = [b"", b"a", b"ab", b"abc", b"node-1"] + [rng.randbytes(rng.randrange(0, 64)) for _ in range(3000)]
    for key in keys:
        assert codec.murmur2(key) & 0x7FFFFFFF == aiokafka_murmur2(key) & 0x7FFFFFFF, key
    assert codec.node_partition("node-7", 6) == (aiokafka_murmur2(b"node-7") & 0x7FFFFFFF) % 6


def test_topic_fetch_sizes_are_rawcaps() -> None:
    from rawcap.kafka import TOPIC_MAX_REQUEST, consumer_kwargs

    kw = consumer_kwargs(load_config(None, {"kafka.bootstrap": "k:1"}, env={}))
    assert wire.PARTITION_FETCH_BYTES == TOPIC_MAX_REQUEST == kw["max_partition_fetch_bytes"]
    assert wire.FETCH_MAX_BYTES == kw["fetch_max_bytes"]


@pytest.mark.parametrize("version", range(4, 12))
def test_fetch_request_is_aiokafkas(version: int) -> None:
    cls = getattr(afetch, f"FetchRequest_v{version}")
    part = (3, 123456789, wire.PARTITION_FETCH_BYTES)
    request = afetch.FetchRequest(codec.FETCH_MAX_WAIT_MS, 1, wire.FETCH_MAX_BYTES, 0, [(TOPIC, [part])])
    assert codec.fetch_request(version, TOPIC, 3, 123456789, partition_bytes=wire.PARTITION_FETCH_BYTES,
                              max_bytes=wire.FETCH_MAX_BYTES) == request.build(cls).encode()


@pytest.mark.parametrize("version", range(1, 6))
def test_metadata_request_is_aiokafkas(version: int) -> None:
    cls = getattr(ameta, f"MetadataRequest_v{version}")
    request = ameta.MetadataRequest([TOPIC], allow_auto_topic_creation=False)
    assert codec.metadata_request(version, TOPIC) == request.build(cls).encode()


@pytest.mark.parametrize("version", range(1, 4))
@pytest.mark.parametrize("ts", [codec.EARLIEST, codec.LATEST, 1_700_000_000_000])
def test_list_offsets_request_is_aiokafkas(version: int, ts: int) -> None:
    cls = getattr(aoffset, f"OffsetRequest_v{version}")
    request = aoffset.OffsetRequest(-1, 0, [(TOPIC, [(0, ts), (2, ts)])])
    assert codec.list_offsets_request(version, TOPIC, [0, 2], ts) == request.build(cls).encode()


def _metadata_response(version: int, *, topic_err: int = 0, part_err: int = 0) -> bytes:
    brokers = [(1, "10.0.0.1", 9092, None), (2, "10.0.0.2", 9093, "rack-b")]
    parts = [(part_err if p == 1 else 0, p, 1 + p % 2, [1, 2], [1], *([[]] if version >= 5 else []))
             for p in range(3)]
    other = (0, "other", False, [(0, 0, 2, [2], [2], *([[]] if version >= 5 else []))])
    ours = (topic_err, TOPIC, False, parts)
    fields: list[Any] = [brokers]
    if version >= 2:
        fields.append("cluster")
    fields += [1, [other, ours]]
    if version >= 3:
        fields.insert(0, 0)  # throttle_time_ms
    return bytes(getattr(ameta, f"MetadataResponse_v{version}")(*fields).encode())


@pytest.mark.parametrize("version", range(1, 6))
def test_metadata_response_decodes(version: int) -> None:
    meta = codec.parse_metadata(version, _metadata_response(version), 0, TOPIC)
    assert meta.brokers == {1: codec.Broker("10.0.0.1", 9092), 2: codec.Broker("10.0.0.2", 9093)}
    assert meta.leaders == {0: 1, 1: 2, 2: 1}
    with pytest.raises(codec.Unsupported, match="error code 3"):
        codec.parse_metadata(version, _metadata_response(version, topic_err=3), 0, TOPIC)
    with pytest.raises(codec.Unsupported, match=r"\[1\]: error code 5"):
        codec.parse_metadata(version, _metadata_response(version, part_err=5), 0, TOPIC)
    with pytest.raises(codec.Unsupported, match="truncated"):
        codec.parse_metadata(version, _metadata_response(version)[:-7], 0, TOPIC)


@pytest.mark.parametrize("version", range(1, 6))
def test_list_offsets_response_decodes(version: int) -> None:
    def part(p: int, err: int = 0) -> tuple[Any, ...]:
        return (p, err, 1000 + p, 10 * p, *([7] if version >= 4 else []))

    def encode(*parts: tuple[Any, ...]) -> bytes:
        fields: list[Any] = [[("other", [part(0)]), (TOPIC, list(parts))]]
        if version >= 2:
            fields.insert(0, 0)
        return bytes(getattr(aoffset, f"OffsetResponse_v{version}")(*fields).encode())

    got = codec.parse_list_offsets(version, encode(part(0), part(2)), 0, TOPIC)
    assert got == {0: (1000, 0), 2: (1002, 20)}
    with pytest.raises(codec.Unsupported, match="error code 6"):
        codec.parse_list_offsets(version, encode(part(0), part(2, 6)), 0, TOPIC)


def _cfg(bootstrap: str) -> Any:
    return load_config(None, {"kafka.bootstrap": bootstrap}, env={})


async def _aiokafka_offsets(bootstrap: str, partition: int, lo_ms: int) -> tuple[int, int, Any]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await c.start()
    try:
        tp = TopicPartition(TOPIC, partition)
        begin, end = await c.beginning_offsets([tp]), await c.end_offsets([tp])
        found = (await c.offsets_for_times({tp: lo_ms}))[tp]
        return begin[tp], end[tp], None if found is None else (found.offset, found.timestamp)
    finally:
        await c.stop()


async def test_lookup_agrees_with_aiokafka(stack: Any, node_name: str) -> None:
    now = time_ns()
    t0 = now - 10 * 60 * 10**9
    await _produce(stack.bootstrap, _batches(node_name, t0, 1_000_000, 12, 20), node_name)
    cfg = _cfg(stack.bootstrap)
    for lo in (t0 - 10**9, t0 + 6 * 20 * 1_000_000 + MARGIN_NS, now + 3600 * 10**9):
        lookup = start_kafka_lookup(cfg, lo, [node_name])
        assert lookup is not None
        done = await anyio.to_thread.run_sync(lookup.result)
        assert done is lookup, lookup._error
        try:
            (pw,) = done.partitions
            assert pw.partition == codec.node_partition(node_name, done.partition_count)
            lo_ms = max(0, (lo - MARGIN_NS) // 1_000_000)
            want = await _aiokafka_offsets(stack.bootstrap, pw.partition, lo_ms)
            assert (pw.begin, pw.end, pw.found) == want
        finally:
            done.close()
    every = start_kafka_lookup(cfg, t0, None)
    assert every is not None and await anyio.to_thread.run_sync(every.result) is every
    assert [pw.partition for pw in every.partitions] == list(range(every.partition_count))
    every.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_lookup_leaves_what_it_cannot_do_to_aiokafka(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = start_kafka_lookup(_cfg(f"127.0.0.1:{_closed_port()}"), 0, None)
    assert nobody is not None and await anyio.to_thread.run_sync(nobody.result) is None
    assert isinstance(nobody._error, codec.Unsupported)
    no_topic = wire.WindowLookup(_cfg(stack.bootstrap), 0, None, topic="rawcap.no-such-topic")
    assert await anyio.to_thread.run_sync(no_topic.result) is None
    tls = load_config(None, {"kafka.bootstrap": stack.bootstrap, "kafka.securityProtocol": "SSL"}, env={})
    assert start_kafka_lookup(tls, 0, None) is None
    off = load_config(None, {"kafka.bootstrap": stack.bootstrap, "kafka.readClient": "aiokafka"}, env={})
    assert start_kafka_lookup(off, 0, None) is None


async def test_read_falls_back_to_aiokafka_when_the_lookup_fails(
    stack: Any, node_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time_ns()
    t0 = now - 5 * 60 * 10**9
    await _produce(stack.bootstrap, _batches(node_name, t0, 1_000_000, 5, 20), node_name)
    cfg = _cfg(stack.bootstrap)

    async def read(**kw: Any) -> list[int]:
        async with WindowReader(cfg, t0 - 10**9, now, nodes=[node_name], **kw) as r:
            return [p.ts_ns async for chunk in r.packets() for p in chunk]

    want = [t0 + i * 1_000_000 for i in range(100)]
    assert await read() == want
    # A lookup for another window is not used (closed), and one for this window is.
    other = start_kafka_lookup(cfg, t0 - 60 * 10**9, [node_name])
    assert await read(kafka_lookup=other) == want and other is not None and other._closed
    ours = start_kafka_lookup(cfg, t0 - 10**9, [node_name])
    assert await read(kafka_lookup=ours) == want and ours is not None and ours._closed

    def broken(self: Any) -> None:
        raise codec.Unsupported("test")

    monkeypatch.setattr(wire.WindowLookup, "_lookup", broken)
    assert await read() == want  # through aiokafka's consumer
    assert [t.name for t in threading.enumerate() if t.name.startswith("rawcap-kafka")] == []


_IN_PROCESS = """
import sys, threading
from rawcap.cli import main
rc = main(sys.argv[1:])
others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
for t in others:
    t.join(0.2)  # as rawcap.cli._exit_now waits for them (AnyIO's workers end right after the loop)
left = [t.name for t in others if t.is_alive()]
print(rc, "aiokafka" in sys.modules, left, file=sys.stderr)
"""


def test_export_without_aiokafka_equals_aiokafkas(kenv: dict[str, str], tmp_path: Path) -> None:
    """``pcap export`` of a window starts its Kafka lookups before the event loop, never
    imports aiokafka, leaves no thread behind (so the fast exit holds) and writes the bytes
    that aiokafka's path writes."""
    from .conftest import GZIP_PARTITION, node_on_partition

    node_name = node_on_partition(GZIP_PARTITION, on=False)  # no gzip batch of another test in its reads
    now = time_ns()
    t0 = now - 5 * 60 * 10**9
    anyio.run(_produce, kenv["RAWCAP_BOOTSTRAP"], _batches(node_name, t0, 1_000_000, 40, 50, 600), node_name)
    window = ["--node", node_name, "--from", str(t0 // 10**9 - 1), "--to", str(now // 10**9 + 1)]
    wired, classic = tmp_path / "wire.pcapng", tmp_path / "aiokafka.pcapng"
    p = subprocess.run([sys.executable, "-c", _IN_PROCESS, "pcap", "export", *window, "-o", str(wired)],
                       capture_output=True, env={**os.environ, **kenv}, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr.decode().splitlines()[-1] == "0 False []"
    aiokafka_only = {**kenv, "RAWCAP_KAFKA_READ_CLIENT": "aiokafka"}
    p = rawcap("pcap", "export", *window, "-o", str(classic), env=aiokafka_only)
    assert p.returncode == 0, p.stderr.decode()
    assert wired.read_bytes() == classic.read_bytes() and len(wired.read_bytes()) > 40 * 50 * 600
    # Every node of the window (one lane and one connection per partition) the same way too.
    every = ["--from", str(t0 // 10**9 - 1), "--to", str(now // 10**9 + 1)]
    p = rawcap("pcap", "export", *every, "-o", str(tmp_path / "all-wire.pcapng"), env=kenv)
    assert p.returncode == 0, p.stderr.decode()
    p = rawcap("pcap", "export", *every, "-o", str(tmp_path / "all-aiokafka.pcapng"),
               env={**kenv, "RAWCAP_KAFKA_READ_CLIENT": "aiokafka"})
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "all-wire.pcapng").read_bytes() == (tmp_path / "all-aiokafka.pcapng").read_bytes()
    # The process itself (the rawcap script, fast exit and all) writes the same file.
    again = tmp_path / "again.pcapng"
    p = subprocess.run([*RAWCAP, "pcap", "export", *window, "-o", str(again)], capture_output=True,
                       env={**os.environ, **kenv}, timeout=120)
    assert p.returncode == 0 and again.read_bytes() == wired.read_bytes(), p.stderr.decode()


def test_unreachable_broker_is_still_aiokafkas_error(tmp_path: Path) -> None:
    p = rawcap("pcap", "export", "--from", "-1m", "-o", str(tmp_path / "x.pcapng"),
               env={"RAWCAP_BOOTSTRAP": f"127.0.0.1:{_closed_port()}"}, timeout=120)
    # One line: rawcap's, with aiokafka's reason in it (aiokafka's own log line is kept
    # out of one-shot commands, rawcap.log.setup_logging).
    lines = p.stderr.decode().strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("rawcap: error: cannot reach Kafka") and "KafkaConnectionError" in lines[0]
    assert not list(tmp_path.iterdir())
