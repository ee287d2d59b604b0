"""Where the rows come from: Parquet objects in the archive (Polars reads them straight from
``s3://``, ``gs://``, ``az://`` or a directory), or ``rawcap.calls`` / ``rawcap.flows`` on
Kafka; both give the same columns (:mod:`schemas.tables`).

``auto`` (the default) splits a range at ``now - history.kafkaRecent`` (2h): what is older
comes from the archive (the table writer holds an hour's records before it writes them,
``archive.tables.flushInterval``), what is newer from Kafka, if Kafka still holds that cut;
otherwise the whole range comes from the archive.

:func:`rollup_frames` gives the hourly roll-ups (:mod:`schemas.rollups`) of a range instead:
whole hours from the archive's roll-up objects; partial hours at the edges, and the part
read from Kafka, rolled up from raw rows with the writer's own function. It declines
(returns why) when a raw object of the range has no roll-up (written before roll-ups
existed: ``rawcap archive tables --rollup-backfill``), so that nothing is left out.
"""

from __future__ import annotations

import itertools
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
from schemas.rollups import ROLLUP_OF, rollup_key, rollup_schema, rollups
from schemas.tables import HOUR_NS, call_rows, flow_rows, flow_ts_ns, frame, parse_table_key

__all__ = ("Source", "archive_frame", "choose_source", "kafka_frame", "kafka_holds", "object_keys",
           "rollup_frames", "storage_options")

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
    return sorted(_listed(store, [kind], lo_ns, hi_ns)[kind])


def _listed(store: ArchiveStore, kinds: list[str], lo_ns: int, hi_ns: int,
            ) -> dict[str, list[tuple[str, int]]]:
    lo_h, hi_h = lo_ns // HOUR_NS, (hi_ns - 1) // HOUR_NS
    days = sorted({h // 24 for h in range(lo_h, hi_h + 1)})

    def day(item: tuple[str, int]) -> list[dict[str, Any]]:
        kind, d = item
        date = time.strftime("%Y-%m-%d", time.gmtime(d * 86400))
        return store.list_objects(f"kind={kind}/date={date}/")

    with ThreadPoolExecutor(8) as pool:
        listed = [m for metas in pool.map(day, [(k, d) for k in kinds for d in days]) for m in metas]
    out: dict[str, list[tuple[str, int]]] = {k: [] for k in kinds}
    for m in listed:
        try:
            k = parse_table_key(m["path"])
        except ValueError:
            continue
        if k.kind in out and lo_h <= k.hour <= hi_h:
            out[k.kind].append((m["path"], int(m["size"])))
    return out


class Source:
    """What a command read: from where (``archive``, ``kafka``, both), how many objects and
    bytes; for a kind answered from the hourly roll-ups, that, and how many partial hours at
    the edges were rolled up from raw rows; why a kind was read raw (``notes``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects = 0
        self.bytes = 0
        self.rolled: list[str] = []  # kinds answered from roll-ups
        self.raw_hours = 0  # partial hours rolled up from raw rows
        self.notes: dict[str, str] = {}  # kind -> why it was read raw

    def describe(self) -> str:
        """``archive (N objects, X MB)``, ``kafka``, or ``archive (...) + kafka``, then how
        each kind was read: ``calls from hourly roll-ups (...), flows from raw rows (why)``."""
        text = self.name
        if "archive" in self.name:
            text = f"archive ({self.objects} objects, {self.bytes / 1e6:.1f} MB)"
            text = text + " + kafka" if "kafka" in self.name else text
        how = []
        for kind in self.rolled:
            edge = f", {self.raw_hours} partial hour(s) from raw rows" if self.raw_hours else ""
            how.append(f"{kind} from hourly roll-ups{edge}")
        how += [f"{kind} from raw rows ({why})" for kind, why in self.notes.items()]
        return text + ("; " + ", ".join(how) if how else "")


def _rollup_scan(cfg: Config, rkind: str, lo_h: int, hi_h: int, src: Source) -> Any:
    """A LazyFrame of the ``rkind`` roll-ups of hours ``[lo_h, hi_h)`` from the archive, or
    a string saying why not (a raw object without its roll-up)."""
    import polars as pl

    store = ArchiveStore.from_config(cfg)
    raw_kinds = [k for k, rks in ROLLUP_OF.items() if rkind in rks]
    listed = _listed(store, [*raw_kinds, rkind], lo_h * HOUR_NS, hi_h * HOUR_NS)
    have = {k: size for k, size in listed[rkind]}
    keys = []
    for kind in raw_kinds:
        for raw, _size in listed[kind]:
            if not lo_h <= parse_table_key(raw).hour < hi_h:
                continue
            key = rollup_key(raw, rkind)
            if key not in have:
                return (f"{kind} objects without {rkind} roll-ups, e.g. {raw}: "
                        "rawcap archive tables --rollup-backfill writes them")
            keys.append(key)
    keys.sort()
    src.objects += len(keys)
    src.bytes += sum(have[k] for k in keys)
    if not keys:
        return pl.LazyFrame(schema=rollup_schema(rkind))
    base = store.url.rstrip("/")
    if store.scheme == "file":
        base = urlparse(store.url).path.rstrip("/")
    return pl.scan_parquet([f"{base}/{k}" for k in keys], storage_options=storage_options(store.url),
                           hive_partitioning=False, glob=False, schema=rollup_schema(rkind),
                           missing_columns="insert", extra_columns="ignore")


async def rollup_frames(cfg: Config, choice: str, rkinds: list[str], cuts: list[int], now_ns: int,
                        src: Source) -> dict[str, Any] | str:
    """``rkind`` -> LazyFrame of the roll-ups of ``[cuts[0], cuts[-1])``, with a column
    ``span``: the index of the interval between two ``cuts`` its rows fall in (no row mixes
    two). Whole hours come from the archive's roll-up objects; the partial hours at the
    edges of each interval, and the part :func:`choose_source` gives to Kafka, are rolled up
    here from raw rows, with the writer's own function. A string says why roll-ups cannot
    answer (a raw object of the range has none)."""
    import polars as pl

    lo_ns, hi_ns = cuts[0], cuts[-1]
    plan = await choose_source(cfg, choice, lo_ns, hi_ns, now_ns)
    bounds = sorted({*cuts, *(b for _n, _a, b in plan[:-1])})
    pieces: list[tuple[str, int, int, int]] = []  # (source, span, lo, hi)
    for name, a, b in plan:
        for lo, hi in itertools.pairwise(bounds):
            lo, hi = max(lo, a), min(hi, b)
            if lo < hi:
                span = max(i for i, c in enumerate(cuts[:-1]) if c <= lo)
                pieces.append((name, span, lo, hi))
    raw_kinds = [k for k, rks in ROLLUP_OF.items() if set(rks) & set(rkinds)]
    out: dict[str, list[Any]] = {rk: [] for rk in rkinds}

    def add(span: int, made: dict[str, Any]) -> None:
        for rk, df in made.items():
            if rk in out:
                out[rk].append(df.lazy().with_columns(pl.lit(span, pl.Int32).alias("span")))

    for name, span, lo, hi in pieces:
        if name == "kafka":
            for kind in raw_kinds:
                add(span, rollups(kind, (await kafka_frame(cfg, kind, lo, hi)).collect()))
            continue
        lo_h, hi_h = -(-lo // HOUR_NS), hi // HOUR_NS  # whole hours inside
        if hi_h > lo_h:
            for rk in rkinds:
                lf = _rollup_scan(cfg, rk, lo_h, hi_h, src)
                if isinstance(lf, str):
                    return lf
                out[rk].append(lf.with_columns(pl.lit(span, pl.Int32).alias("span")))
            edges = [(lo, lo_h * HOUR_NS), (hi_h * HOUR_NS, hi)]
        else:
            edges = [(lo, hi)]
        for a, b in edges:
            if a < b:
                src.raw_hours += 1
                for kind in raw_kinds:
                    add(span, rollups(kind, archive_frame(cfg, kind, a, b, src).collect()))
    schema = {rk: {**rollup_schema(rk), "span": pl.Int32} for rk in rkinds}
    return {rk: pl.concat(lfs) if lfs else pl.LazyFrame(schema=schema[rk]) for rk, lfs in out.items()}


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
    from schemas.calls import decode_calls
    from schemas.flows import UnsupportedFlow, decode_flow

    topic = TOPIC[kind]
    recs: list[tuple[int, int, Any]] = []
    got_recs: list[tuple[int, Any]]
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
                            if kind == "calls":  # version 2: several calls per record
                                got_recs = [(c.ts_ns, c) for c in decode_calls(m.value)]
                            else:
                                flow = decode_flow(m.value)
                                got_recs = [(flow_ts_ns(flow), flow)]
                        except (ValueError, UnsupportedFlow) as exc:
                            log.warning("skipping %s record at %d/%d: %s", topic, tp.partition, m.offset, exc)
                            continue
                        recs.extend((tp.partition, m.offset, rec) for ts, rec in got_recs
                                    if lo_ns <= ts < hi_ns)
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
