"""Consumers scale out, on the session's 3-broker secured cluster: two instances of
``archive``, ``dissect --follow`` and ``enrich`` (each as its service user) split the
partitions of ``rawcap.packets``; ``kill -9`` of one moves its partitions to the other within
the session timeout, and the group's committed offsets still reach the end of every
partition (nothing skipped). Ownership and lag come from each instance's own ``/metrics``
(``rawcap_consumer_partitions``, ``rawcap_consumer_lag_*``). Throughput and CPU per MB for
1-3 instances are bench/scaleout's."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from pathlib import Path

import anyio
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from rawcap.kafka import admin_kwargs, make_producer, start_consumer
from rawcap.stack import Stack
from rawcap.stack._proc import free_port
from schemas.topics import PACKETS
from tests.archiver.helpers import make_batch, nodes_on_partitions
from tests.capture.helpers import RAWCAP, Proc

pytestmark = pytest.mark.integration

GROUPS = {"archive": "rawcap-archiver", "dissect": "rawcap-dissector", "enrich": "rawcap-enrich"}
#: the consumers' session timeout (archive's --session-timeout, aiokafka's default for the
#: others) plus a rebalance
MOVE_WITHIN_S = 10 + 10


def _owned(port: int) -> tuple[int, float] | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    parts = re.search(r"^rawcap_consumer_partitions\{[^}]*\} (\S+)$", text, re.M)
    lag = re.search(r"^rawcap_consumer_lag_total_records\{[^}]*\} (\S+)$", text, re.M)
    if not parts or not lag:
        return None
    return int(float(parts.group(1))), float(lag.group(1))


async def _behind(stack: Stack, group: str) -> int:
    """Records between the group's committed offsets and the end of rawcap.packets."""
    cfg = stack.config()
    admin = AIOKafkaAdminClient(**admin_kwargs(cfg))
    await admin.start()
    consumer = await start_consumer(cfg)
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        parts = consumer.partitions_for_topic(PACKETS) or set()
        if not parts:
            await consumer._client._wait_on_metadata(PACKETS)
            parts = consumer.partitions_for_topic(PACKETS) or set()
        tps = [TopicPartition(PACKETS, p) for p in sorted(parts)]
        end = await consumer.end_offsets(tps)
        return sum(end[tp] - (offsets[tp].offset if tp in offsets else 0) for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


async def _produce(stack: Stack, names: list[str], rounds: int, seq0: int) -> None:
    producer = make_producer(stack.config())
    await producer.start()
    try:
        futs = []
        for r in range(rounds):
            for name in names:
                value = make_batch(name, seq0 + r, time.time_ns(), packets=20)
                futs.append(await producer.send(PACKETS, value, key=name.encode()))
        for f in futs:
            await f
    finally:
        await producer.stop()


def _instance(stack: Stack, kind: str, port: int, tmp: Path, i: int) -> Proc:
    args = {"archive": ["archive", "--url", f"file://{tmp}/archive", "--flush-interval", "1s"],
            "dissect": ["dissect", "--follow", "--quiet", "--no-k8s", "--db", str(tmp / f"c{i}.db")],
            "enrich": ["enrich"]}[kind]
    return Proc([RAWCAP, "--config", str(stack.service_config(kind)), *args],
                env={"RAWCAP_METRICS_PORT": str(port), "RAWCAP_TAP_CAPTURE_STOP_AFTER": "0",
                     "RAWCAP_ENRICH_FLOW_INTERVAL": "1s", "RAWCAP_ENRICH_GRACE": "500ms"})


@pytest.mark.timeout(400)
@pytest.mark.parametrize("kind", sorted(GROUPS))
async def test_two_instances_split_and_survive_a_kill_9(cluster: Stack, tmp_path: Path,
                                                       kind: str) -> None:
    (tmp_path / "archive").mkdir()
    names = nodes_on_partitions(f"scale-{kind}-{uuid.uuid4().hex[:4]}", 6)
    ports = [free_port(), free_port()]
    procs = [_instance(cluster, kind, ports[i], tmp_path, i) for i in range(2)]
    try:
        await _produce(cluster, names, 3, 1)
        deadline = time.monotonic() + 180
        while True:
            got = [_owned(p) for p in ports]
            if all(g is not None and g[0] > 0 for g in got) and \
                    sum(g[0] for g in got if g is not None) == 6:
                break
            assert time.monotonic() < deadline, (
                f"the two instances never split the partitions: {got}\n"
                + "\n".join(f"--- instance {i}:\n{p.text[-3000:]}" for i, p in enumerate(procs)))
            await anyio.sleep(0.5)
        split = [g[0] for g in got if g is not None]

        procs[1].p.kill()  # kill -9
        procs[1].p.wait()
        killed = time.monotonic()
        with anyio.fail_after(MOVE_WITHIN_S + 30, reason="the partitions did not move"):
            while (_owned(ports[0]) or (0, 0.0))[0] != 6:  # noqa: ASYNC110
                await anyio.sleep(0.25)
        moved_s = time.monotonic() - killed

        await _produce(cluster, names, 3, 4)
        with anyio.fail_after(180, reason="the surviving instance did not commit to the end"):
            while await _behind(cluster, GROUPS[kind]) > 0:  # noqa: ASYNC110
                await anyio.sleep(1)
        with anyio.fail_after(15, reason="the lag gauge did not come back to 0"):
            while (_owned(ports[0]) or (0, -1.0))[1] != 0:  # noqa: ASYNC110
                await anyio.sleep(0.5)
    finally:
        rcs = [p.stop() for p in procs]
    assert split in ([3, 3], [2, 4], [4, 2]), split
    assert moved_s < MOVE_WITHIN_S, f"the partitions moved after {moved_s:.1f} s"
    assert rcs[0] == 0, procs[0].text
