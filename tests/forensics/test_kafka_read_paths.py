"""The two Kafka read paths of a window read (rawcap.window's Kafka lanes): the plaintext
client's zero-copy fetcher and stock aiokafka's consumer read the same packets, and the
fetcher hands a partition to aiokafka at the offset where it meets something it leaves to it."""

from __future__ import annotations

import itertools
from time import time_ns
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from schemas import Packet, encode_batch, topics

from .test_kafka import _batches, _frame, _produce

pytestmark = pytest.mark.integration


async def _read_in_process(
    bootstrap: str, node: str, lo: int, hi: int, **cfg: str
) -> list[tuple[int, bytes]]:
    from rawcap.config import load_config
    from rawcap.window import WindowReader

    config = load_config(None, {"kafka.bootstrap": bootstrap, **cfg}, env={})
    async with WindowReader(config, lo, hi, nodes=[node]) as r:
        return [(p.ts_ns, bytes(p.data)) async for chunk in r.packets() for p in chunk]


#: Run k of the test below writes to GZIP_PARTITION 20 - 3 * k minutes back, later in time
#: than every earlier run: a run's read (offsets_for_times 16 s before its window) then
#: starts past the earlier runs' gzip batches, which would hand the partition to aiokafka
#: before the fetcher under test failed (a run less than 26 s after the previous one did).
_GZIP_SLOT = itertools.count()
_AIOKAFKA = {"kafka.readClient": "aiokafka"}


@pytest.mark.parametrize(("client", "fail_at"),
                         [("wire", None), ("wire", 0), ("wire", 2), ("aiokafka", None)])
async def test_zero_copy_fetch_and_its_fallback_read_the_same_packets(
    stack: Any, monkeypatch: pytest.MonkeyPatch, fail_at: int | None, client: str
) -> None:
    """The two read paths read the same window: the plaintext client's zero-copy fetcher
    (rawcap.kafka._wire.WireFetcher, its own connection, no aiokafka) and, with
    kafka.readClient=aiokafka, stock aiokafka's consumer (rawcap.kafka.ConsumerFetcher). When
    the zero-copy fetcher meets something it leaves to aiokafka (here: a failed fetch from the
    start, or after two responses) aiokafka's consumer reads on from the same offset.
    Kafka-compressed batches (gzip here) take aiokafka's path by themselves."""
    from rawcap.kafka import _codec
    from rawcap.kafka import _wire as _kafkawire

    from .conftest import GZIP_PARTITION, node_on_partition

    node_name = node_on_partition(GZIP_PARTITION)  # its gzip batches stay on that partition
    now = time_ns()
    t0 = now - (20 - 3 * next(_GZIP_SLOT)) * 60 * 10**9
    # 30 x 40 packets of 28 kB: ~34 MB, several 8 MiB fetch responses
    await _produce(stack.bootstrap, _batches(node_name, t0, 2_000_000, 30, 40, 1400 * 20), node_name)
    gz = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, compression_type="gzip", linger_ms=50)
    await gz.start()
    try:
        t1 = t0 + 10**10
        for k in range(3):  # uncompressed bodies of alike frames: gzip shrinks them
            pk = [Packet(t1 + (10 * k + i) * 1_000, 62, 62, 2, 0, _frame(i)) for i in range(10)]
            value = encode_batch(node=node_name, seq=31 + k, packets=pk, ifaces={2: "eth0"}, codec="none")
            await gz.send(topics.PACKETS, value, key=node_name.encode(), timestamp_ms=pk[0].ts_ns // 10**6)
        await gz.flush()
    finally:
        await gz.stop()
    want = [t0 + i * 2_000_000 for i in range(30 * 40)] + [t1 + i * 1_000 for i in range(30)]
    calls = {"fetch": 0, "fallback": 0, "compressed": 0}
    real_parse = _kafkawire.parse_record_batches

    def parse(records: Any, offset: int) -> Any:
        try:
            return real_parse(records, offset)
        except _codec.Unsupported as exc:
            calls["compressed"] += "compressed" in str(exc)
            raise

    real_exchange = _kafkawire.WireFetcher._exchange

    def exchange(self: Any, offset: int) -> Any:  # in the fetch thread, as a broken connection
        calls["fetch"] += 1
        if fail_at is not None and calls["fetch"] > fail_at:
            calls["fallback"] += 1
            raise _codec.Unsupported("test")
        return real_exchange(self, offset)

    monkeypatch.setattr(_kafkawire.WireFetcher, "_exchange", exchange)
    monkeypatch.setattr(_kafkawire, "parse_record_batches", parse)
    got = await _read_in_process(stack.bootstrap, node_name, t0 - 10**9, now,
                                 **({} if client == "wire" else _AIOKAFKA))
    assert [t for t, _ in got] == want
    if client == "aiokafka":
        assert calls == {"fetch": 0, "fallback": 0, "compressed": 0}  # the plaintext client stayed out
        return
    assert calls["fetch"] > 0  # the fetcher under test did read
    assert calls["fallback"] == (0 if fail_at is None else 1)
    assert calls["compressed"] == (1 if fail_at is None else 0)  # else aiokafka had it already
    # And stock aiokafka alone reads the same.
    assert await _read_in_process(stack.bootstrap, node_name, t0 - 10**9, now, **_AIOKAFKA) == got
