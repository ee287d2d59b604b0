"""``rawcap.kafka.GroupLag``: the gauges, and that a rebalance mid-update never raises."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaTimeoutError
from prometheus_client import CollectorRegistry

from rawcap.kafka import GroupLag


class _Consumer:
    """What GroupLag reads of an aiokafka consumer; ``revoked`` partitions raise as
    aiokafka's do once a rebalance took them away."""

    def __init__(self, ends: dict[int, int], positions: dict[int, int], revoked: set[int] = frozenset(),  # type: ignore[assignment]
                 fail_ends: bool = False) -> None:
        self.ends, self.positions, self.revoked, self.fail_ends = ends, positions, revoked, fail_ends

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("rawcap.packets", p) for p in self.positions}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.fail_ends:
            raise KafkaTimeoutError()
        return {tp: self.ends[tp.partition] for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        if tp.partition in self.revoked:
            raise IllegalStateError(f"Partition {tp} is not assigned")
        return self.positions[tp.partition]


def _value(reg: CollectorRegistry, name: str, **labels: Any) -> float | None:
    return reg.get_sample_value(name, labels)


async def test_lag_per_partition_total_and_owned() -> None:
    reg = CollectorRegistry()
    lag = GroupLag("rawcap-archiver", reg)
    assert await lag.update(_Consumer({0: 100, 1: 50}, {0: 40, 1: 50})) == 60
    assert _value(reg, "rawcap_consumer_lag_records", group="rawcap-archiver",
                  topic="rawcap.packets", partition="0") == 60
    assert _value(reg, "rawcap_consumer_lag_total_records", group="rawcap-archiver") == 60
    assert _value(reg, "rawcap_consumer_partitions", group="rawcap-archiver") == 2
    # partition 1 moved to another instance: its gauge goes away
    assert await lag.update(_Consumer({0: 100}, {0: 100})) == 0
    assert _value(reg, "rawcap_consumer_lag_records", group="rawcap-archiver",
                  topic="rawcap.packets", partition="1") is None
    assert _value(reg, "rawcap_consumer_partitions", group="rawcap-archiver") == 1


async def test_a_rebalance_or_a_silent_broker_never_raises() -> None:
    reg = CollectorRegistry()
    lag = GroupLag("rawcap-enrich", reg)
    got = await lag.update(_Consumer({0: 10, 1: 10}, {0: 5, 1: 0}, revoked={1}))
    assert got == 5  # the revoked partition is left out, not an error
    assert await lag.update(_Consumer({0: 10}, {0: 5}, fail_ends=True)) == 0
