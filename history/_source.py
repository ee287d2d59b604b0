"""Where the rows come from: Parquet objects in the archive (Polars reads them straight from
``s3://``, ``gs://``, ``az://`` or a directory), or ``rawcap.calls`` / ``rawcap.flows`` on
Kafka; both give the same columns (:mod:`schemas.tables`).

``auto`` (the default) splits a range at ``now - history.kafkaRecent`` (2h): what is older
comes from the archive (the table writer holds an hour's records before it writes them,
``archive.tables.flushInterval``), what is newer from Kafka, if Kafka still holds that cut;
otherwise the whole range comes from the archive.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from rawcap.archive import ArchiveStore
from rawcap.config import Config
from schemas import topics
from schemas.errors import ConfigError, RawcapError
from schemas.tables import HOUR_NS, call_rows, flow_rows, flow_ts_ns, frame, parse_table_key

__all__ = ("Source", "archive_frame", "choose_source", "kafka_frame", "kafka_holds", "object_keys",
           "storage_options")

log = logging.getLogger("rawcap.history")

TOPIC = {"calls": topics.CALLS, "flows": topics.FLOWS}


def storage_options(url: str) -> dict[str, str] | None:
    """Polars ``storage_options`` for an archive URL: the same environment the archiver uses
    (``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores); None lets Polars take
    each cloud's own credential chain."""
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("s3", "s3a"):
        return None
    opts: dict[str, str] = {}
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("AWS_ENDPOINT") or "")
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        opts["aws_region"] = region or "us-east-1"
    for env, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
                     ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    return opts or None


def object_keys(store: ArchiveStore, kind: str, lo_ns: int, hi_ns: int) -> list[tuple[str, int]]:
    """(key, size) of every object of ``kind`` whose hour overlaps [lo, hi), one LIST per day."""
    lo_h, hi_h = lo_ns // HOUR_NS, (hi_ns - 1) // HOUR_NS
    days = sorted({h // 24 for h in range(lo_h, hi_h + 1)})

    def day(d: int) -> list[dict[str, Any]]:
        date = time.strftime("%Y-%m-%d", time.gmtime(d * 86400))
        return store.list_objects(f"kind={kind}/date={date}/")

    with ThreadPoolExecutor(8) as pool:
        listed = [m for metas in pool.map(day, days) for m in metas]
    out = []
    for m in listed:
        try:
            k = parse_table_key(m["path"])
        except ValueError:
            continue
        if k.kind == kind and lo_h <= k.hour <= hi_h:
            out.append((m["path"], int(m["size"])))
    return sorted(out)


class Source:
    """What a command read: from where, how many objects and bytes, how many rows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects = 0
        self.bytes = 0

    def describe(self) -> str:
        """``archive (N objects, X MB)``, ``kafka``, or ``archive (...) + kafka``."""
        if "archive" not in self.name:
            return self.name
        text = f"archive ({self.objects} objects, {self.bytes / 1e6:.1f} MB)"
        return text + " + kafka" if "kafka" in self.name else text


def archive_frame(cfg: Config, kind: str, lo_ns: int, hi_ns: int, src: Source) -> Any:
    """A ``polars.LazyFrame`` of ``kind`` rows with ``lo <= ts < hi`` from the archive."""
    import polars as pl

    store = ArchiveStore.from_config(cfg)
    keys = object_keys(store, kind, lo_ns, hi_ns)
    src.objects += len(keys)
    src.bytes += sum(size for _k, size in keys)
    from schemas.tables import polars_schema

    if not keys:
        return pl.LazyFrame(schema=polars_schema(kind))
    base = store.url.rstrip("/")
    if store.scheme == "file":
        base = urlparse(store.url).path.rstrip("/")
    paths = [f"{base}/{k}" for k, _s in keys]
    lf = pl.scan_parquet(paths, storage_options=storage_options(store.url), hive_partitioning=False,
                         glob=False, schema=polars_schema(kind), missing_columns="insert",
                         extra_columns="ignore")
    lo = pl.lit(lo_ns // 1000).cast(pl.Datetime("us", "UTC"))
    hi = pl.lit(hi_ns // 1000).cast(pl.Datetime("us", "UTC"))
    return lf.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))


async def kafka_frame(cfg: Config, kind: str, lo_ns: int, hi_ns: int, margin_s: float = 120.0) -> Any:
    """``kind`` rows with ``lo <= ts < hi`` read from Kafka (from ``offsets_for_times`` at
    ``lo - margin`` up to the end offsets as of now)."""
    from rawcap.kafka import start_consumer, stop_client, topic_partitions
    from schemas.calls import decode_call
    from schemas.flows import UnsupportedFlow, decode_flow

    topic = TOPIC[kind]
    recs: list[tuple[int, int, Any]] = []
    rec: Any
    consumer = await start_consumer(cfg, f" to read {topic}")
    try:
        tps = await topic_partitions(consumer, topic)
        if tps:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.offsets_for_times({tp: max(0, lo_ns // 1_000_000 - int(margin_s * 1000))
                                                       for tp in tps})
            live = []
            for tp in tps:
                st = starts.get(tp)
                if st is not None and st.offset < ends[tp]:
                    consumer.seek(tp, st.offset)
                    live.append(tp)
            # To the end offsets as of now: Kafka timestamps are not in offset order (the
            # dissector stamps a call when it sends it, a replay sends old calls late), so a
            # record past `to` says nothing about the ones after it.
            while live:
                got = await consumer.getmany(*live, timeout_ms=1000, max_records=5000)
                done = set()
                for tp, batch in got.items():
                    for m in batch:
                        if m.offset >= ends[tp]:
                            done.add(tp)
                            break
                        try:
                            if kind == "calls":
                                call = decode_call(m.value)
                                rec, ts = call, call.ts_ns
                            else:
                                flow = decode_flow(m.value)
                                rec, ts = flow, flow_ts_ns(flow)
                        except (ValueError, UnsupportedFlow) as exc:
                            log.warning("skipping %s record at %d/%d: %s", topic, tp.partition, m.offset, exc)
                            continue
                        if lo_ns <= ts < hi_ns:
                            recs.append((tp.partition, m.offset, rec))
                live = [tp for tp in live if tp not in done and await consumer.position(tp) < ends[tp]]
    finally:
        await stop_client(consumer)
    return frame(kind, call_rows(recs) if kind == "calls" else flow_rows(recs)).lazy()


async def choose_source(cfg: Config, choice: str, lo_ns: int, hi_ns: int, now_ns: int) -> list[
        tuple[str, int, int]]:
    """``[(source, lo, hi), ...]`` covering ``[lo, hi)`` for ``--source auto|archive|kafka``
    (the rule in the module docstring)."""
    if choice in ("archive", "kafka"):
        return [(choice, lo_ns, hi_ns)]
    if choice != "auto":
        raise ConfigError(f"--source {choice!r} is invalid: expected auto, archive or kafka")
    cut = now_ns - int(cfg.get("history.kafkaRecent") * 1e9)
    if hi_ns <= cut or not await kafka_holds(cfg, max(lo_ns, cut)):
        return [("archive", lo_ns, hi_ns)]
    if lo_ns >= cut:
        return [("kafka", lo_ns, hi_ns)]
    return [("archive", lo_ns, cut), ("kafka", cut, hi_ns)]


async def kafka_holds(cfg: Config, t_ns: int) -> bool:
    """Whether every partition of rawcap.calls still holds records from ``t_ns`` on (its
    first record is not younger), i.e. retention has not removed that time yet."""
    from rawcap.kafka import start_consumer, stop_client, topic_partitions

    try:
        consumer = await start_consumer(cfg, " to see what rawcap.calls holds")
    except RawcapError:
        return False
    try:
        tps = await topic_partitions(consumer, topics.CALLS)
        if not tps:
            return False
        consumer.assign(tps)
        earliest = await consumer.offsets_for_times({tp: 0 for tp in tps})
        return all(e is not None and e.timestamp <= t_ns // 1_000_000 for e in earliest.values())
    finally:
        await stop_client(consumer)
