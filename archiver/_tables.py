"""``rawcap.calls`` / ``rawcap.flows`` into Hive-partitioned Parquet objects, exactly once.

A :class:`TableArchiver` is the archive consumer (:class:`archiver.Archiver`: fetch loop,
bounded buffers, upload workers, commits, rebalancing, SIGTERM) on another topic, with its
own consumer group (``rawcap-tables-calls`` / ``rawcap-tables-flows``). Records of one
partition are grouped per UTC hour of their row time into one future object (closed at
``archive.tables.objectSize`` of record data, after ``archive.tables.flushInterval``, when
the partition moves on to a later hour, and at shutdown); its key names the Kafka offsets it
holds (layout: :mod:`schemas.tables`). Offsets are committed only after the object is
written.

Each raw object is followed by its hourly roll-ups (:mod:`schemas.rollups`: ``calls_1h`` or
``flows_1h``, then ``peers_1h``), objects of the same name under their own kinds, computed
from the same records.

Exactly once: a Parquet object is written by a single PUT, so an object that exists is
complete. The last roll-up (``peers_1h``) plays the packet archive's index: written last, it
says the raw object and all its roll-ups are there. After a crash the partition restarts
from its committed offset; for each hour it meets, the objects of that hour and partition
are listed; a record inside a raw object that has its ``peers_1h`` is skipped (archived
already); a raw object without it (the crash fell between the PUTs, or it was written before
roll-ups existed) is *adopted*: the buffer that starts at its first offset is cut at its last
offset, so the same raw object is written again, then its roll-ups. No record is counted
twice, none is left out. A record that does not decode goes to ``rawcap.dlq``.

:func:`backfill` writes the missing roll-ups of raw objects already in the bucket (objects
written before roll-ups existed), reading each raw object once; it is idempotent.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from rawcap.archive import ArchiveStore
from rawcap.config import Config
from schemas import topics
from schemas.calls import decode_calls
from schemas.flows import UnsupportedFlow, decode_flow
from schemas.rollups import ROLLUP_OF, ROLLUP_VERSION, rollup_key, rollups
from schemas.tables import (
    HOUR_NS,
    SCHEMA_METADATA_KEY,
    TABLES_VERSION,
    call_rows,
    flow_rows,
    flow_ts_ns,
    frame,
    hour_prefix,
    parse_table_key,
    polars_schema,
    table_key,
)

from ._archiver import Archiver
from ._plan import Buffer, Known, PartitionPlan

__all__ = ("TABLES_GROUP", "Backfill", "TableArchiver", "backfill", "to_parquet")

log = logging.getLogger("rawcap.archive")

TABLES_GROUP = "rawcap-tables"
TOPIC_OF = {"calls": topics.CALLS, "flows": topics.FLOWS}


@dataclass(frozen=True, slots=True)
class _Row:
    """What :class:`PartitionPlan` needs of a record: the name of its object group (the
    table kind; the packet archiver's is a node) and how many rows it is."""

    node: str
    count: int


def to_parquet(df: Any, row_group_rows: int, *, rollup: bool = False) -> bytes:
    """One Parquet object (zstd, column statistics) of a frame of table rows
    (:func:`schemas.tables.frame`) or, with ``rollup``, of a roll-up; its key-value metadata
    names the schema version it was written with (``rawcap.schema``: ``tables/1``,
    ``rollups/1``)."""
    out = io.BytesIO()
    version = f"rollups/{ROLLUP_VERSION}" if rollup else f"tables/{TABLES_VERSION}"
    df.write_parquet(out, compression="zstd", compression_level=3, statistics=True,
                     row_group_size=row_group_rows, metadata={SCHEMA_METADATA_KEY: version})
    return out.getvalue()


def _decode(kind: str, value: bytes) -> tuple[int, list[Any]]:
    """(row time in ns, rows) of one record; ValueError if the value is not a record of
    ``kind``. A ``rawcap.calls`` record of version 2 holds several calls (the dissector cuts
    its records so that they share node and UTC hour); its row time is its first call's."""
    if kind == "calls":
        calls = decode_calls(value)
        if not calls:
            raise ValueError("call record without calls")
        return calls[0].ts_ns, calls
    try:
        flow = decode_flow(value)
    except UnsupportedFlow as exc:
        raise ValueError(str(exc)) from None
    return flow_ts_ns(flow), [flow]


class TableArchiver(Archiver):
    """The Parquet writer of one table kind (``calls`` or ``flows``).

    ``own_signals=False`` leaves SIGTERM/SIGINT to the caller, which calls
    :meth:`on_signal` (``rawcap archive tables`` runs both kinds in one process)."""

    #: Its records are decoded into rows (small values, no framing): not measured with the
    #: project's fetch client, so it stays on aiokafka's fetcher.
    wire_reads = False

    def __init__(self, cfg: Config, kind: str, *, group: str | None = None, own_signals: bool = True,
                 **kw: Any) -> None:
        if kind not in TOPIC_OF:
            raise ValueError(f"unknown table kind {kind!r}")
        cfg = cfg.with_overrides({
            "archive.objectSize": cfg.get("archive.tables.objectSize"),
            "archive.flushInterval": cfg.get("archive.tables.flushInterval"),
            "archive.retention": 0,  # the sweep knows the packet layout; use a lifecycle rule
            "metrics.port": 0,
        })
        super().__init__(cfg, group=group or f"{TABLES_GROUP}-{kind}", topic=TOPIC_OF[kind], **kw)
        self.kind = kind
        self.own_signals = own_signals
        self.row_group_rows = int(cfg.get("archive.tables.rowGroupRows"))
        self._one_row = _Row(kind, 1)

    async def _signals(self) -> None:
        if self.own_signals:
            await super()._signals()
        else:
            await anyio.sleep_forever()

    async def _take(self, plan: PartitionPlan, r: Any) -> None:
        try:
            if r.value is None:
                raise ValueError("record has no value")
            ts_ns, rows = _decode(self.kind, r.value)
        except ValueError as exc:
            await self._dlq(r, exc, plan.partition)
            plan.skip(r.offset)
            return
        group = self._one_row if len(rows) == 1 else _Row(self.kind, len(rows))
        await self._place(plan, r, group, ts_ns // HOUR_NS)

    async def _lookup(self, plan: PartitionPlan, node: str, hour: int) -> list[Known]:
        """Objects of this partition already written for this hour (each one is complete);
        ``indexed``: its last roll-up exists too."""
        last = ROLLUP_OF[self.kind][-1]
        raw, done = await self._list_retrying(hour_prefix(self.kind, hour), hour_prefix(last, hour))

        def ranges(metas: list[dict[str, Any]], kind: str) -> set[tuple[int, int]]:
            out = set()
            for m in metas:
                try:
                    k = parse_table_key(m["path"])
                except ValueError:
                    continue
                if k.topic == plan.topic and k.partition == plan.partition and k.kind == kind:
                    out.add((k.first, k.last))
            return out

        complete = ranges(done, last)
        return [Known(f, la, (f, la) in complete) for f, la in ranges(raw, self.kind)]

    def _build(self, plan: PartitionPlan, buf: Buffer) -> tuple[list[tuple[str, str, bytes]], int, int]:
        """The PUTs of one buffer, in order (raw object, then its roll-ups), its rows and the
        raw object's size."""
        recs = [(plan.partition, off, row) for off, value, _h in buf.batches
                for row in _decode(self.kind, value)[1]]
        cols = call_rows(recs) if self.kind == "calls" else flow_rows(recs)
        key = table_key(self.kind, buf.hour, plan.topic, plan.partition, buf.first, buf.batches[-1][0])
        df = frame(self.kind, cols)
        data = to_parquet(df, self.row_group_rows)
        puts = [("put_data", key, data)]
        puts += [("put_rollup", rollup_key(key, rkind), to_parquet(r, self.row_group_rows, rollup=True))
                 for rkind, r in rollups(self.kind, df).items()]
        return puts, len(recs), len(data)

    async def _write(self, buf: Buffer) -> None:
        plan = buf.plan
        if plan.abandoned:
            return
        puts, rows, size = await anyio.to_thread.run_sync(self._build, plan, buf)
        records = len(buf.batches)
        buf.batches = []
        t = await self._put_retrying(plan, puts)
        if t is None:
            return
        m, s = self.metrics, self.summary
        m.upload_seconds.observe(time.monotonic() - t)
        m.objects_written.inc()
        m.index_written.inc()  # the roll-ups: the raw object's completion mark
        m.bytes_written.inc(size)
        m.packets_written.inc(rows)
        s.objects += 1
        s.batches += records
        s.packets += rows
        s.bytes += size
        log.debug("wrote %s and its roll-ups", puts[0][1], extra={"bytes": size, "rows": rows})


# -- backfill -------------------------------------------------------------------------------
@dataclass
class Backfill:
    """What :func:`backfill` did."""

    raw: int = 0  # raw objects in the range
    complete: int = 0  # that had every roll-up already
    built: int = 0  # raw objects read and rolled up
    written: int = 0  # roll-up objects written
    bytes_read: int = 0
    bytes_written: int = 0
    errors: list[str] = field(default_factory=list)


async def backfill(store: ArchiveStore, kinds: list[str], lo_hour: int, hi_hour: int, *, workers: int = 2,
                   row_group_rows: int = 131072,
                   progress: Callable[[Backfill], None] | None = None) -> Backfill:
    """Write the missing roll-ups of the raw ``kinds`` objects of hours ``[lo, hi)``; an object
    that fails is named in ``errors`` and the others go on."""
    out = Backfill()
    todo: list[tuple[str, str, list[str]]] = []  # (kind, raw key, missing roll-up kinds)
    days = sorted({h // 24 for h in range(lo_hour, hi_hour)})
    for kind in kinds:
        for day in days:
            date = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
            raw = await store.alist(f"kind={kind}/date={date}/")
            have = {m["path"] for rk in ROLLUP_OF[kind] for m in await store.alist(f"kind={rk}/date={date}/")}
            for m in raw:
                try:
                    k = parse_table_key(m["path"])
                except ValueError:
                    continue
                if k.kind != kind or not lo_hour <= k.hour < hi_hour:
                    continue
                out.raw += 1
                missing = [rk for rk in ROLLUP_OF[kind] if rollup_key(m["path"], rk) not in have]
                if missing:
                    todo.append((kind, m["path"], missing))
                else:
                    out.complete += 1

    def build(kind: str, key: str) -> tuple[int, dict[str, bytes]]:
        import polars as pl

        data = store.get(key)
        df = pl.read_parquet(io.BytesIO(data))
        df = df.select(pl.col(c).cast(t) if c in df.columns else pl.lit(None, t).alias(c)
                       for c, t in polars_schema(kind).items())
        return len(data), {rk: to_parquet(r, row_group_rows, rollup=True)
                           for rk, r in rollups(kind, df).items()}

    async def one(item: tuple[str, str, list[str]], limit: anyio.CapacityLimiter) -> None:
        kind, key, missing = item
        try:
            async with limit:
                size, made = await anyio.to_thread.run_sync(build, kind, key)
            last = ROLLUP_OF[kind][-1]
            for rk in ROLLUP_OF[kind]:  # in the writer's order: the last one marks completion
                if rk in missing or rk == last:
                    await store.put(rollup_key(key, rk), made[rk])
                    out.written += 1
                    out.bytes_written += len(made[rk])
        except Exception as exc:
            out.errors.append(f"{key}: {str(exc).splitlines()[0][:300]}")
            return
        out.built += 1
        out.bytes_read += size
        if progress:
            progress(out)

    limit = anyio.CapacityLimiter(max(1, workers))
    async with anyio.create_task_group() as tg:
        for item in todo:
            tg.start_soon(one, item, limit)
    return out
