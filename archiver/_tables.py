"""``rawcap.calls`` / ``rawcap.flows`` into Hive-partitioned Parquet objects, exactly once.

A :class:`TableArchiver` is the archive consumer (:class:`archiver.Archiver`: fetch loop,
bounded buffers, upload workers, commits, rebalancing, SIGTERM) on another topic, with its
own consumer group (``rawcap-tables-calls`` / ``rawcap-tables-flows``). Records of one
partition are grouped per UTC hour of their row time into one future object (closed at
``archive.tables.objectSize`` of record data, after ``archive.tables.flushInterval``, when
the partition moves on to a later hour, and at shutdown); its key names the Kafka offsets it
holds (layout: :mod:`schemas.tables`). Offsets are committed only after the object is
written.

Exactly once: a Parquet object is written by a single PUT, so an object that exists is
complete. After a crash the partition restarts from its committed offset; for each hour
it meets, the objects of that hour and partition are listed, and a record whose offset lies
inside one of them is skipped (it is archived already); the others are written. No record
is written twice, none is left out. A record that does not decode goes to ``rawcap.dlq``.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio

from rawcap.config import Config
from schemas import topics
from schemas.calls import decode_call
from schemas.flows import UnsupportedFlow, decode_flow
from schemas.tables import (
    HOUR_NS,
    call_rows,
    flow_rows,
    flow_ts_ns,
    frame,
    hour_prefix,
    parse_table_key,
    table_key,
)

from ._archiver import Archiver
from ._plan import Buffer, Known, PartitionPlan

__all__ = ("TABLES_GROUP", "TableArchiver", "to_parquet")

log = logging.getLogger("rawcap.archive")

TABLES_GROUP = "rawcap-tables"
TOPIC_OF = {"calls": topics.CALLS, "flows": topics.FLOWS}


@dataclass(frozen=True, slots=True)
class _Row:
    """What :class:`PartitionPlan` needs of a record: the name of its object group (the
    table kind; the packet archiver's is a node) and how many rows it is."""

    node: str
    count: int


def to_parquet(df: Any, row_group_rows: int) -> bytes:
    """One Parquet object (zstd, column statistics) of a frame of table rows
    (:func:`schemas.tables.frame`)."""
    out = io.BytesIO()
    df.write_parquet(out, compression="zstd", compression_level=3, statistics=True,
                     row_group_size=row_group_rows)
    return out.getvalue()


def _decode(kind: str, value: bytes) -> tuple[int, Any]:
    """(row time in ns, record); ValueError if the value is not a record of ``kind``."""
    if kind == "calls":
        call = decode_call(value)
        return call.ts_ns, call
    try:
        flow = decode_flow(value)
    except UnsupportedFlow as exc:
        raise ValueError(str(exc)) from None
    return flow_ts_ns(flow), flow


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
        self._group_of = _Row(kind, 1)

    async def _signals(self) -> None:
        if self.own_signals:
            await super()._signals()
        else:
            await anyio.sleep_forever()

    async def _take(self, plan: PartitionPlan, r: Any) -> None:
        try:
            if r.value is None:
                raise ValueError("record has no value")
            ts_ns, _rec = _decode(self.kind, r.value)
        except ValueError as exc:
            await self._dlq(r, exc, plan.partition)
            plan.skip(r.offset)
            return
        await self._place(plan, r, self._group_of, ts_ns // HOUR_NS)

    async def _lookup(self, plan: PartitionPlan, node: str, hour: int) -> list[Known]:
        """Objects of this partition already written for this hour (each one is complete)."""
        (metas,) = await self._list_retrying(hour_prefix(self.kind, hour))
        found = []
        for m in metas:
            try:
                k = parse_table_key(m["path"])
            except ValueError:
                continue
            if k.topic == plan.topic and k.partition == plan.partition and k.kind == self.kind:
                found.append(Known(k.first, k.last, True))
        return found

    def _build(self, plan: PartitionPlan, buf: Buffer) -> tuple[str, bytes, int]:
        recs = [(plan.partition, off, _decode(self.kind, value)[1]) for off, value, _h in buf.batches]
        cols = call_rows(recs) if self.kind == "calls" else flow_rows(recs)
        key = table_key(self.kind, buf.hour, plan.topic, plan.partition, buf.first, buf.batches[-1][0])
        return key, to_parquet(frame(self.kind, cols), self.row_group_rows), len(recs)

    async def _write(self, buf: Buffer) -> None:
        plan = buf.plan
        if plan.abandoned:
            return
        key, data, rows = await anyio.to_thread.run_sync(self._build, plan, buf)
        buf.batches = []
        t = await self._put_retrying(plan, [("put_data", key, data)])
        if t is None:
            return
        m, s = self.metrics, self.summary
        m.upload_seconds.observe(time.monotonic() - t)
        m.objects_written.inc()
        m.bytes_written.inc(len(data))
        m.packets_written.inc(rows)
        s.objects += 1
        s.batches += rows
        s.packets += rows
        s.bytes += len(data)
        log.debug("wrote %s", key, extra={"bytes": len(data), "rows": rows})
