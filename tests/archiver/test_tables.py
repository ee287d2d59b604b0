"""``rawcap archive tables`` against the private stack: real Kafka, real MinIO, kill -9.

Each test commits its consumer groups at the end of rawcap.calls / rawcap.flows first, so a
writer sees only the records its test produces, and writes under its own prefix.
"""

from __future__ import annotations

import io
import random
import signal
import time
from typing import Any

import anyio
import obstore
import polars as pl
import pytest
from aiokafka import AIOKafkaProducer

from schemas import topics
from schemas.calls import Call, encode_call
from schemas.tables import CALL_COLUMNS, FLOW_COLUMNS, parse_table_key
from tests.history.helpers import SERVERS, make_call, make_flow

from .helpers import Proc, ProducerThread, precommit_end, rawcap, s3_store, wait_committed

pytestmark = pytest.mark.integration

FAST = ["--flush-interval", "0.3s", "--object-size", "64Ki", "--session-timeout", "6"]


class CallTraffic(ProducerThread):
    """A thread producing calls to rawcap.calls at a steady rate (timestamps: now) until
    stopped; it remembers every offset Kafka acknowledged, with the call."""

    def __init__(self, bootstrap: str, node: str, rate: float = 200.0) -> None:
        super().__init__()
        self.bootstrap, self.node, self.rate = bootstrap, node, rate
        self.sent: dict[int, Call] = {}

    async def _run(self) -> None:
        rng = random.Random(5)
        try:
            prod = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
            await prod.start()
            try:
                while not self._stop.is_set():
                    batch = [make_call(rng, time.time_ns(), self.node, SERVERS[i % 3],
                                       ("shop", f"web-{i}", "10.2.0.5")) for i in range(20)]
                    futs = [(c, await prod.send(topics.CALLS, encode_call(c), key=c.node.encode(),
                                                timestamp_ms=c.ts_ns // 1_000_000)) for c in batch]
                    for c, f in futs:
                        meta = await f
                        self.sent[meta.offset] = c
                    await anyio.sleep(20 / self.rate)
            finally:
                await prod.stop()
        except BaseException as exc:  # reported by stop()
            self.error = exc


def _tables(env: dict[str, str], group: str, *extra: str) -> Proc:
    p = Proc(["archive", "tables", "--group", group, *FAST, *extra], env)
    p.wait_for("archiver running", timeout=60)
    return p


def _write_all(env: dict[str, str], group: str, kind: str, bootstrap: str) -> Proc:
    """Run the writer of one kind until its group has committed the topic's end; stop it."""
    w = _tables(env, group, "--kinds", kind)
    try:
        wait_committed(bootstrap, f"{group}-{kind}", [0], timeout=90,
                       topic=topics.CALLS if kind == "calls" else topics.FLOWS)
    finally:
        assert w.stop() == 0, w.text
    return w


def _read_all(store: Any, kind: str) -> tuple[list[str], pl.DataFrame]:
    """Every object of ``kind``, each stamped with the schema version it was written with."""
    from schemas.rollups import ROLLUP_VERSION
    from schemas.tables import SCHEMA_METADATA_KEY, TABLES_VERSION

    want = f"tables/{TABLES_VERSION}" if kind in ("calls", "flows") else f"rollups/{ROLLUP_VERSION}"
    keys = sorted(m["path"] for chunk in obstore.list(store, prefix=f"kind={kind}/") for m in chunk)
    bodies = [io.BytesIO(bytes(obstore.get(store, k).bytes())) for k in keys]
    for key, body in zip(keys, bodies, strict=True):
        assert pl.read_parquet_metadata(body).get(SCHEMA_METADATA_KEY) == want, key
        body.seek(0)
    frames = [pl.read_parquet(body) for body in bodies]
    return keys, pl.concat(frames) if frames else pl.DataFrame()


def _check_rollups(store: Any, keys: list[str], df: pl.DataFrame) -> None:
    """Every raw object has its roll-ups, and they add up to the raw rows exactly."""
    from schemas.rollups import rollup_key

    _rkeys, hourly = _read_all(store, "calls_1h")
    _pkeys, edges = _read_all(store, "peers_1h")
    listed = set(_rkeys) | set(_pkeys)
    assert all(rollup_key(k, rk) in listed for k in keys for rk in ("calls_1h", "peers_1h"))
    assert len(listed) == 2 * len(keys), "roll-ups of no raw object"
    assert int(hourly["calls"].sum()) == len(df) == int(edges["records"].sum())
    assert int(hourly["errors"].sum()) == int(df["failed"].sum())
    assert int(hourly["timed"].sum()) == df["latency_ns"].count()
    assert int(hourly["req_bytes"].sum()) == int(df["req_bytes"].sum())
    assert sum(sum(c) for c in hourly["lat_counts"].to_list() if c) == df["latency_ns"].count()
    per_service = dict(hourly.group_by("dst_service").agg(pl.col("calls").sum()).iter_rows())
    assert per_service == dict(df.group_by("dst_service").agg(pl.len()).iter_rows())


def test_kill_9_writes_every_call_exactly_once(stack: Any, aenv: dict[str, str], run_id: str) -> None:
    group = f"{run_id}-t"
    anyio.run(precommit_end, stack.bootstrap, f"{group}-calls", topics.CALLS)
    rng = random.Random()
    kills = resumed = 0
    with CallTraffic(stack.bootstrap, f"{run_id}-node") as traffic:
        while kills < 5:
            w = _tables(aenv, group, "--kinds", "calls")
            w.wait_for("assigned partitions", timeout=60)
            time.sleep(rng.uniform(0.3, 2.0))
            assert w.p.poll() is None, w.text
            w.stop(signal.SIGKILL)
            kills += 1
            resumed += w.count("resuming: objects of this partition exist already")
        traffic.stop()
    sent = dict(traffic.sent)
    assert len(sent) > 500
    final = _tables(aenv, group, "--kinds", "calls")
    try:
        wait_committed(stack.bootstrap, f"{group}-calls", [0], timeout=120, topic=topics.CALLS)
    finally:
        assert final.stop() == 0, final.text
    keys, df = _read_all(s3_store(stack, run_id), "calls")
    offsets = df["kafka_offset"].to_list()
    mine = [o for o in offsets if o in sent]
    assert len(mine) == len(set(mine)), "a record was written twice"
    assert set(mine) == set(sent), f"{len(set(sent) - set(mine))} records missing"
    assert len(offsets) == len(mine), "rows that this test did not produce"
    # every object holds exactly the offsets its name says (of its hour), in order
    for k in keys:
        tk = parse_table_key(k)
        assert tk.first <= tk.last and tk.hour * 3600 <= time.time()
    assert df.columns == [c for c, _t, _d in CALL_COLUMNS]
    _check_rollups(s3_store(stack, run_id), keys, df)
    by_offset = {r["kafka_offset"]: r for r in df.iter_rows(named=True)}
    for off, c in sent.items():
        r = by_offset[off]
        assert (r["node"], r["path"], r["dst_ip"], r["latency_ns"], r["dst_service"]) == (
            c.node, c.path, c.dst_ip, c.latency_ns, c.dst_workload.removeprefix("service/"))
        assert int(r["ts"].timestamp() * 1e6) == c.ts_ns // 1000
    print(f"\n{kills} kills, {resumed} restarts found objects of the hour already written; "
          f"{len(keys)} objects hold {len(sent)} calls once each")


def test_flows_and_bad_kinds(stack: Any, aenv: dict[str, str], run_id: str) -> None:
    bad = rawcap("archive", "tables", "--kinds", "calls,packets", env=aenv)
    assert bad.returncode == 2
    err = bad.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "--kinds" in err[0], err
    group = f"{run_id}-f"
    anyio.run(precommit_end, stack.bootstrap, f"{group}-flows", topics.FLOWS)
    rng = random.Random(3)
    t0 = time.time_ns() - 3 * 3_600_000_000_000
    flows = [make_flow(t0 + i * 60_000_000_000, f"{run_id}-n", SERVERS[i % 3], ("shop", "web-1", "10.2.0.5"),
                       40000 + i, rng.randrange(100, 9000)) for i in range(200)]

    async def send() -> None:
        from schemas.flows import encode_flow
        from tests.history.helpers import produce_values

        await produce_values(stack.bootstrap, topics.FLOWS,
                             [(f.node, encode_flow(f), f.first_ns) for f in flows])

    anyio.run(send)
    _write_all(aenv, group, "flows", stack.bootstrap)
    keys, df = _read_all(s3_store(stack, run_id), "flows")
    assert df.columns == [c for c, _t, _d in FLOW_COLUMNS]
    assert len(df) == 200 and df["kafka_offset"].n_unique() == 200
    assert len({parse_table_key(k).hour for k in keys}) >= 3  # 200 minutes span 4 hours
    total = int(df["bytes_fwd"].sum()) + int(df["bytes_rev"].sum())
    assert total == sum(f.bytes_fwd + f.bytes_rev for f in flows)
    assert set(df["src_owner"].to_list()) == {"Deployment/web"}
    assert set(df["dst_service"].to_list()) == {s.service for s in SERVERS}


@pytest.mark.parametrize("rolled_up", [True, False], ids=["with-rollups", "raw-only"])
def test_object_written_before_a_crash_is_kept_or_adopted(
        stack: Any, aenv: dict[str, str], run_id: str, rolled_up: bool) -> None:
    """The crash between the PUTs and the commit, made exact: an object of the first 40
    records exists, the group's offset is still before them. With its roll-ups (the last one
    is the completion mark) its records are skipped; without them (the crash fell between
    the raw PUT and the roll-ups) the same object is written again, then its roll-ups."""
    from archiver._tables import to_parquet
    from schemas.rollups import rollup_key, rollups
    from schemas.tables import call_rows, frame, table_key

    group = f"{run_id}-c"
    start = anyio.run(precommit_end, stack.bootstrap, f"{group}-calls", topics.CALLS)[0]
    rng = random.Random(9)
    hour = time.time_ns() // 3_600_000_000_000 - 2
    calls = [make_call(rng, hour * 3_600_000_000_000 + i * 10_000_000_000, f"{run_id}-n",
                       SERVERS[i % 3], ("shop", "web-1", "10.2.0.5")) for i in range(100)]

    async def send() -> None:
        from tests.history.helpers import produce_values

        await produce_values(stack.bootstrap, topics.CALLS,
                             [(c.node, encode_call(c), c.ts_ns) for c in calls])

    anyio.run(send)
    store = s3_store(stack, run_id)
    early = table_key("calls", hour, topics.CALLS, 0, start, start + 39)
    df40 = frame("calls", call_rows((0, start + i, c) for i, c in enumerate(calls[:40])))
    body = to_parquet(df40, 1000)
    obstore.put(store, early, body)
    if rolled_up:
        for rk, r in rollups("calls", df40).items():
            obstore.put(store, rollup_key(early, rk), to_parquet(r, 1000, rollup=True))
    w = _write_all(aenv, group, "calls", stack.bootstrap)
    assert w.count("resuming: objects of this partition exist already") == 1
    summary = next(line for line in w.lines if line.startswith("calls: archive summary:"))
    if rolled_up:
        assert " skipped=40 " in summary and " packets=60 " in summary, summary
        assert bytes(obstore.get(store, early).bytes()) == body
    else:
        assert " adopted=1" in summary and " packets=100 " in summary, summary
        again = pl.read_parquet(io.BytesIO(bytes(obstore.get(store, early).bytes())))
        assert again.equals(df40)
    keys, df = _read_all(store, "calls")
    assert early in keys
    assert sorted(df["kafka_offset"].to_list()) == list(range(start, start + 100))
    assert sorted(df["path"].to_list()) == sorted(c.path for c in calls)
    _check_rollups(store, keys, df)


def test_version_2_records_several_calls_each(stack: Any, aenv: dict[str, str], run_id: str) -> None:
    """Records as the dissector writes them (several calls of one node and hour each) beside
    version-1 ones: every call is a row once, under its own hour, with its record's offset."""
    from tests.history.helpers import call_records, produce_values

    group = f"{run_id}-v2"
    start = anyio.run(precommit_end, stack.bootstrap, f"{group}-calls", topics.CALLS)[0]
    rng = random.Random(11)
    hour = time.time_ns() // 3_600_000_000_000 - 3
    calls = [make_call(rng, hour * 3_600_000_000_000 + i * 20_000_000_000, f"{run_id}-n{i % 2}",
                       SERVERS[i % 3], ("shop", "web-1", "10.2.0.5")) for i in range(400)]
    items = [*call_records(calls[:360], per_record=37),
             *((c.node, encode_call(c), c.ts_ns) for c in calls[360:])]
    anyio.run(produce_values, stack.bootstrap, topics.CALLS, items)
    w = _write_all(aenv, group, "calls", stack.bootstrap)
    summary = next(line for line in w.lines if line.startswith("calls: archive summary:"))
    assert f" batches={len(items)} " in summary and " packets=400 " in summary, summary
    keys, df = _read_all(s3_store(stack, run_id), "calls")
    assert len({parse_table_key(k).hour for k in keys}) >= 2  # 400 x 20 s span 3 hours
    assert sorted(df["path"].to_list()) == sorted(c.path for c in calls)
    assert set(df["kafka_offset"].to_list()) == set(range(start, start + len(items)))
    store = s3_store(stack, run_id)
    for k in keys:
        rows = pl.read_parquet(io.BytesIO(bytes(obstore.get(store, k).bytes())))
        assert {int(t.timestamp()) // 3600 for t in rows["ts"].to_list()} == {parse_table_key(k).hour}
    _check_rollups(store, keys, df)
