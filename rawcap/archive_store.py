"""The long-term archive: object layout, index format, store access and the window reader.

Shared by the writer (``archiver/``, ``rawcap archive``) and every reader (``--source
archive`` of the forensics commands, ``rawcap archive ls``); ``docs/archiver.md`` is the
prose version. Under the archive URL (``archive.url``: ``s3://bucket/prefix``,
``gs://...``, ``az://container/prefix``, ``file:///dir``)::

    node=<N>/date=YYYY-MM-DD/hour=HH/<name>.rcsg          data: a batch stream (schemas/stream.py)
    index/date=YYYY-MM-DD/hour=HH/node=<N>/<name>.json    index: one small object per data object
    <name> = <topic>-<partition:05d>-<first offset:020d>-<last offset:020d>

A data object holds whole batches of one node whose first packet time (``t0``) falls in
that UTC hour, byte for byte as they were on Kafka, in offset order. Its name derives from
the Kafka range it holds, so writing it again after a crash overwrites the same key with
the same bytes. The index object is written after the data object: a data object is part
of the archive once its index object exists (readers never list data prefixes). The index
names each frame's byte position, sequence number and time range, so a reader fetches only
the byte ranges of the batches inside its window, in parallel.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import logging
import os
import re
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, NamedTuple
from urllib.parse import urlparse

import anyio

from schemas.errors import ConfigError, RawcapError, TransportError
from schemas.stream import FRAME, STREAM_HEADER, frame_batch, stream_header

from .config import Config

__all__ = (
    "INDEX_FORMAT",
    "AccessDenied",
    "ArchiveStore",
    "ArchiveWindow",
    "FrameRef",
    "IndexEntry",
    "ObjectMissing",
    "build_object",
    "data_key",
    "escape_node",
    "hour_of",
    "hour_path",
    "index_key",
    "iter_window",
    "node_of_index_key",
    "object_name",
    "parse_hour_path",
    "parse_object_name",
    "unescape_node",
)

log = logging.getLogger("rawcap.archive")

INDEX_FORMAT: Final = "rawcap.archive.index/1"
HOUR_NS: Final = 3_600_000_000_000
SCHEMES: Final = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "file")
_SAFE = re.compile(r"[A-Za-z0-9_.-]")
_AUTH_FAILURE = re.compile(
    r"<Code>(AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId|ExpiredToken|InvalidToken|"
    r"AuthorizationHeaderMalformed|AuthenticationFailed|AuthorizationFailure)</Code>"
    r"|status code: (401|403)\b"
)
_NAME_RE = re.compile(r"^(?P<topic>.+)-(?P<p>\d{5})-(?P<first>\d{20})-(?P<last>\d{20})$")


class ObjectMissing(RawcapError):
    """An object (or the bucket) the operation needs does not exist."""


class AccessDenied(RawcapError):
    """The store refused the credentials or the operation."""


# -- layout ---------------------------------------------------------------------------------
def escape_node(node: str) -> str:
    """Node name as one path segment: ``[A-Za-z0-9_.-]`` kept, every other byte ``~HH``."""
    out = "".join(ch if _SAFE.match(ch) else "".join(f"~{b:02X}" for b in ch.encode()) for ch in node)
    if not out or out.startswith("."):
        out = "~2E" + out[1:] if out else "~"
    return out


def unescape_node(text: str) -> str:
    if text == "~":
        return ""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "~" and i + 3 <= len(text) and re.fullmatch(r"[0-9A-F]{2}", text[i + 1 : i + 3]):
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += text[i].encode()
            i += 1
    return raw.decode(errors="replace")


def hour_of(ns: int) -> int:
    """Hours since the epoch (UTC) of a nanosecond timestamp."""
    return ns // HOUR_NS


def hour_path(hour: int) -> str:
    t = dt.datetime.fromtimestamp(hour * 3600, dt.UTC)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


def parse_hour_path(date: str, hour: str) -> int:
    t = dt.datetime.strptime(f"{date.removeprefix('date=')} {hour.removeprefix('hour=')}", "%Y-%m-%d %H")
    return int(t.replace(tzinfo=dt.UTC).timestamp()) // 3600


def object_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}-{partition:05d}-{first:020d}-{last:020d}"


def parse_object_name(name: str) -> tuple[str, int, int, int]:
    m = _NAME_RE.match(name.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".rcsg"))
    if not m:
        raise ValueError(f"not an archive object name: {name!r}")
    return m["topic"], int(m["p"]), int(m["first"]), int(m["last"])


def data_key(node: str, hour: int, name: str) -> str:
    return f"node={escape_node(node)}/{hour_path(hour)}/{name}.rcsg"


def index_key(node: str, hour: int, name: str) -> str:
    return f"index/{hour_path(hour)}/node={escape_node(node)}/{name}.json"


def node_of_index_key(key: str) -> str:
    seg = key.split("/")[-2]
    return unescape_node(seg.removeprefix("node="))


# -- index ----------------------------------------------------------------------------------
class FrameRef(NamedTuple):
    """One batch inside a data object: where its frame starts and what it holds."""

    pos: int  # byte offset of the frame header in the object
    length: int  # frame header + batch bytes
    seq: int
    t0: int
    t1: int
    n: int
    offset: int  # Kafka offset


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """The index object of one data object (``index/<hour>/node=<N>/<name>.json``)."""

    node: str
    hour: int
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    size: int
    frames: tuple[FrameRef, ...]

    @property
    def name(self) -> str:
        return object_name(self.topic, self.partition, self.first_offset, self.last_offset)

    @property
    def data_key(self) -> str:
        return data_key(self.node, self.hour, self.name)

    @property
    def index_key(self) -> str:
        return index_key(self.node, self.hour, self.name)

    @property
    def t0(self) -> int:
        return min((f.t0 for f in self.frames), default=0)

    @property
    def t1(self) -> int:
        return max((f.t1 for f in self.frames), default=0)

    @property
    def packets(self) -> int:
        return sum(f.n for f in self.frames)

    def to_json(self) -> bytes:
        """Deterministic bytes: the same batches always give the same index object."""
        doc = {
            "format": INDEX_FORMAT,
            "object": self.data_key,
            "node": self.node,
            "hour": hour_path(self.hour),
            "topic": self.topic,
            "partition": self.partition,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "size": self.size,
            "batches": len(self.frames),
            "packets": self.packets,
            "t0": self.t0,
            "t1": self.t1,
            "seq": [min(f.seq for f in self.frames), max(f.seq for f in self.frames)] if self.frames else [],
            "frames_fields": list(FrameRef._fields),
            "frames": [list(f) for f in self.frames],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | memoryview, key: str = "") -> IndexEntry:
        try:
            doc = json.loads(bytes(data))
            if doc.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {INDEX_FORMAT}")
            date, hour = doc["hour"].split("/")
            return cls(
                node=str(doc["node"]),
                hour=parse_hour_path(date, hour),
                topic=str(doc["topic"]),
                partition=int(doc["partition"]),
                first_offset=int(doc["first_offset"]),
                last_offset=int(doc["last_offset"]),
                size=int(doc["size"]),
                frames=tuple(FrameRef(*map(int, f)) for f in doc["frames"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RawcapError(f"archive index object {key or '?'} is not valid: {exc}") from None


def build_object(
    node: str, hour: int, topic: str, partition: int, batches: Sequence[tuple[int, bytes, Any]]
) -> tuple[IndexEntry, bytes]:
    """Data object bytes and its index entry from ``(offset, value, header)`` in offset order."""
    parts: list[bytes] = [stream_header()]
    frames: list[FrameRef] = []
    pos = STREAM_HEADER.size
    for offset, value, h in batches:
        parts.append(frame_batch(value))
        parts.append(value)
        frames.append(FrameRef(pos, FRAME.size + len(value), h.seq, h.first_ns, h.last_ns, h.count, offset))
        pos += FRAME.size + len(value)
    entry = IndexEntry(node, hour, topic, partition, batches[0][0], batches[-1][0], pos, tuple(frames))
    return entry, b"".join(parts)


# -- store access ---------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    msg = re.search(r"<Message>([^<]+)</Message>", text)
    if code:
        return code.group(1) + (f": {msg.group(1)}" if msg else "")
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


class ArchiveStore:
    """One archive URL opened with obstore; errors come out as rawcap errors.

    Credentials and endpoints come from each cloud's usual environment (``AWS_*``,
    ``GOOGLE_*``, ``AZURE_*``; see docs/archiver.md). obstore retries a failed request a few
    times itself; longer outages are the caller's to wait out (:attr:`TransportError.retriable`).
    """

    def __init__(self, url: str, *, request_timeout: float = 120.0) -> None:
        import obstore
        from obstore.store import LocalStore, from_url

        self._ob = obstore
        if not url:
            raise ConfigError(
                "archive.url is not set: pass --url s3://BUCKET/PREFIX (or gs://, az://, file://) "
                "or set RAWCAP_ARCHIVE_URL"
            )
        self.url = url
        parsed = urlparse(url)
        self.scheme = parsed.scheme.lower()
        if self.scheme not in SCHEMES:
            what = f"unknown scheme {parsed.scheme + '://'!r}" if parsed.scheme else "no scheme"
            raise ConfigError(
                f"archive.url {url!r} is invalid ({what}): expected s3://BUCKET/PREFIX, "
                "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or file:///DIR"
            )
        self.bucket = parsed.netloc
        self.endpoint = ""
        if self.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ConfigError(f"archive.url {url!r} is invalid: file URLs are file:///absolute/dir")
            root = parsed.path
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"archive.url {url}: cannot create directory: {exc.strerror}") from None
            self.store: Any = LocalStore(root)
            return
        if not self.bucket:
            raise ConfigError(f"archive.url {url!r} is invalid: no bucket/container name")
        client: dict[str, Any] = {"timeout": f"{int(request_timeout)}s", "connect_timeout": "5s"}
        config: dict[str, Any] = {}
        if self.scheme in ("s3", "s3a"):
            self.endpoint = (
                os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("AWS_ENDPOINT")
                or ""
            )
            if self.endpoint.startswith("http://"):
                client["allow_http"] = True
            if self.endpoint and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
                config["region"] = "us-east-1"
        elif self.scheme in ("az", "azure") and "@" not in self.bucket:
            if not os.environ.get("AZURE_STORAGE_ACCOUNT_NAME"):
                raise ConfigError(
                    f"archive.url {url}: set AZURE_STORAGE_ACCOUNT_NAME (and a key, SAS token or "
                    "workload identity) for az:// URLs"
                )
        retry = {
            "max_retries": 3,
            "retry_timeout": dt.timedelta(seconds=20),
            "backoff": {
                "init_backoff": dt.timedelta(milliseconds=100),
                "max_backoff": dt.timedelta(seconds=2),
            },
        }
        try:
            build: Any = from_url
            self.store = build(url, config=config or None, client_options=client, retry_config=retry)
        except Exception as exc:
            raise ConfigError(f"archive.url {url}: {_first_line(exc)}") from None

    @classmethod
    def from_config(cls, cfg: Config, url: str | None = None) -> ArchiveStore:
        return cls(url or cfg.get("archive.url"))

    def where(self) -> str:
        return f"{self.url}" + (f" at {self.endpoint}" if self.endpoint else "")

    def error(self, exc: BaseException, op: str, key: str) -> RawcapError:
        """Map an obstore error to a rawcap error whose message is one line."""
        if isinstance(exc, RawcapError):
            return exc
        name = type(exc).__name__
        what = f"{op} {key}" if key else op
        if isinstance(exc, FileNotFoundError) or name == "NotFoundError":
            if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
                return ObjectMissing(f"archive bucket {self.bucket!r} does not exist ({self.where()})")
            return ObjectMissing(f"archive {self.url}: {what}: no such object")
        denied = name in ("PermissionDeniedError", "UnauthenticatedError") or isinstance(exc, PermissionError)
        if denied or _AUTH_FAILURE.search(str(exc)):
            return AccessDenied(
                f"archive {self.where()}: access denied ({_first_line(exc)}): check the credentials "
                "and the bucket policy"
            )
        return TransportError(f"archive {self.where()}: {what} failed: {_first_line(exc)}")

    # async (writer) ------------------------------------------------------------------------
    async def put(self, key: str, data: bytes | memoryview) -> None:
        try:
            await self._ob.put_async(self.store, key, data)
        except Exception as exc:
            raise self.error(exc, "PUT", key) from None

    async def delete(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            try:
                await self._ob.delete_async(self.store, chunk)
            except FileNotFoundError:
                for k in chunk:  # the local store refuses a batch with a missing file in it
                    try:
                        await self._ob.delete_async(self.store, k)
                    except FileNotFoundError:
                        pass
            except Exception as exc:
                raise self.error(exc, "DELETE", chunk[0]) from None

    async def alist(self, prefix: str) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self.list_objects, prefix)

    async def alist_dirs(self, prefix: str) -> list[str]:
        return await anyio.to_thread.run_sync(self.list_dirs, prefix)

    async def aget(self, key: str) -> bytes:
        return await anyio.to_thread.run_sync(self.get, key)

    async def probe(self) -> None:
        """Write, read back and delete a small object: fail fast on a missing bucket or bad
        credentials (non-retriable errors) before anything is consumed."""
        key = f"_rawcap/probe-{os.getpid()}-{os.urandom(4).hex()}"
        body = b"rawcap archive write probe\n"
        await self.put(key, body)
        got = await self.aget(key)
        if got != body:
            raise TransportError(f"archive {self.where()}: probe object read back differs")
        await self.delete([key])

    # sync (reader threads) -----------------------------------------------------------------
    def get(self, key: str) -> bytes:
        try:
            return bytes(self._ob.get(self.store, key).bytes())
        except Exception as exc:
            raise self.error(exc, "GET", key) from None

    def get_range(self, key: str, start: int, end: int) -> memoryview:
        try:
            return memoryview(self._ob.get_range(self.store, key, start=start, end=end))
        except Exception as exc:
            raise self.error(exc, "GET", key) from None

    def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        try:
            out: list[dict[str, Any]] = []
            for chunk in self._ob.list(self.store, prefix or None, chunk_size=1000):
                out.extend(dict(m) for m in chunk)
            return out
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
                raise self.error(exc, "LIST", prefix) from None
            return []
        except Exception as exc:
            raise self.error(exc, "LIST", prefix) from None

    def list_dirs(self, prefix: str) -> list[str]:
        try:
            res = self._ob.list_with_delimiter(self.store, prefix or None)
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
                raise self.error(exc, "LIST", prefix) from None
            return []
        except Exception as exc:
            raise self.error(exc, "LIST", prefix) from None
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in res["common_prefixes"]]

    # reading helpers ---------------------------------------------------------------------
    def hours_present(self, lo_hour: int, hi_hour: int) -> list[int]:
        """Hours in ``[lo_hour, hi_hour]`` that have an index directory (two small listings
        per day for wide windows; a plain enumeration for windows up to two days)."""
        if hi_hour - lo_hour <= 48:
            return list(range(lo_hour, hi_hour + 1))
        out: list[int] = []
        for date in sorted(self.list_dirs("index")):
            date = str(date)
            try:
                day = parse_hour_path(date, "hour=00")
            except ValueError:
                continue
            if day + 23 < lo_hour or day > hi_hour:
                continue
            for h in sorted(self.list_dirs(f"index/{date}")):
                try:
                    hour = parse_hour_path(date, h)
                except ValueError:
                    continue
                if lo_hour <= hour <= hi_hour:
                    out.append(hour)
        return out

    def index_keys(self, hour: int, nodes: Iterable[str] | None) -> list[str]:
        base = f"index/{hour_path(hour)}"
        if nodes is None:
            metas = self.list_objects(base)
        else:
            metas = [m for n in nodes for m in self.list_objects(f"{base}/node={escape_node(n)}")]
        return sorted(m["path"] for m in metas if m["path"].endswith(".json"))

    def load_index(self, key: str) -> IndexEntry | None:
        try:
            return IndexEntry.from_json(self.get(key), key)
        except ObjectMissing:
            log.warning("archive index object vanished (retention?): %s", key)
            return None


# -- window reader --------------------------------------------------------------------------
class _Unit(NamedTuple):
    key: str
    start: int
    end: int


def _frame_values(
    data: memoryview, refs: Sequence[FrameRef], start: int, where: str
) -> list[memoryview | None]:
    """The batch values of ``refs`` in a byte range that starts at object offset ``start``."""
    out: list[memoryview | None] = []
    for ref in refs:
        p = ref.pos - start
        if p + FRAME.size > len(data):
            log.warning("archive object %s ends before the frame at %d", where, ref.pos)
            out.append(None)
            continue
        length, crc = FRAME.unpack_from(data, p)
        value = data[p + FRAME.size : p + FRAME.size + length]
        if FRAME.size + length != ref.length or len(value) != length or zlib.crc32(value) != crc:
            log.warning("archive object %s: frame at %d fails its length/crc32 check", where, ref.pos)
            out.append(None)
            continue
        out.append(value)
    return out


class ArchiveWindow:
    """Batch values of ``[lo, hi)`` from the archive, as an async iterator.

    Hour by hour: the hour's index objects are read in parallel, the batches that overlap
    the window are chosen from them (repeats of a ``(node, seq, t0, n)`` dropped, in case an
    object was ever written twice under two keys), and ordered the way a Kafka reader would
    see them: each node's batches in archive (offset) order, nodes merged by first packet
    time. Only the byte ranges holding those batches are fetched, by a pool of threads, at
    most ``max_bytes`` ahead of the consumer.
    """

    def __init__(
        self,
        store: ArchiveStore,
        lo: int,
        hi: int,
        nodes: Iterable[str] | None = None,
        *,
        parallel: int = 8,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.lo, self.hi = lo, hi
        self.nodes = sorted(set(nodes)) if nodes else None
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="rawcap-archive-read")
        self._hours: deque[int] | None = None
        self._out: deque[memoryview] = deque()
        self._seen: set[tuple[str, int, int, int]] = set()
        self._closed = False
        self.objects = 0
        self.bytes_read = 0

    def __aiter__(self) -> ArchiveWindow:
        return self

    async def __anext__(self) -> memoryview:
        while not self._out:
            if self._closed or not await self._next_hour():
                raise StopAsyncIteration
        return self._out.popleft()

    async def aclose(self) -> None:
        self._closed = True
        self._out.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _wait(self, fut: Future[Any]) -> Any:
        return await anyio.to_thread.run_sync(fut.result, abandon_on_cancel=True)

    async def _next_hour(self) -> bool:
        if self._hours is None:
            hi_hour = hour_of(max(self.lo, self.hi - 1))
            hours = await self._wait(
                self._pool.submit(self.store.hours_present, hour_of(self.lo) - 1, hi_hour)
            )
            self._hours = deque(hours)
        while self._hours:
            hour = self._hours.popleft()
            if await self._read_hour(hour):
                return True
        return False

    async def _read_hour(self, hour: int) -> bool:
        keys = await self._wait(self._pool.submit(self.store.index_keys, hour, self.nodes))
        futs = [self._pool.submit(self.store.load_index, k) for k in keys]
        entries = [e for e in [await self._wait(f) for f in futs] if e is not None]
        # Per node: the chosen frames in archive order.
        per_node: dict[str, list[tuple[IndexEntry, int]]] = {}
        entries.sort(key=lambda e: (e.node, e.topic, e.partition, e.first_offset))
        for e in entries:
            if e.t1 < self.lo or e.t0 >= self.hi:
                continue
            for i, f in enumerate(e.frames):
                if f.n == 0 or f.t1 < self.lo or f.t0 >= self.hi:
                    continue
                ident = (e.node, f.seq, f.t0, f.n)
                if ident in self._seen:
                    continue
                self._seen.add(ident)
                per_node.setdefault(e.node, []).append((e, i))
        if not per_node:
            return False
        order = _merge_by_time(per_node)
        # Units: runs of consecutive chosen frames of one object, cut at unit_cap bytes.
        unit_cap = max(256 * 1024, min(8 * 1024 * 1024, self.max_bytes // (2 * len(per_node))))
        unit_of: dict[tuple[str, int], int] = {}
        units: list[_Unit] = []
        frames_of: list[list[FrameRef]] = []
        last: dict[str, tuple[int, int]] = {}  # data key -> (frame index, unit) of the last chosen frame
        chosen = sorted(
            ((e, i) for run in per_node.values() for e, i in run), key=lambda x: (x[0].data_key, x[1])
        )
        for e, i in chosen:
            f = e.frames[i]
            prev = last.get(e.data_key)
            if prev is not None and prev[0] == i - 1 and f.pos + f.length - units[prev[1]].start <= unit_cap:
                u = prev[1]
                units[u] = units[u]._replace(end=f.pos + f.length)
            else:
                u = len(units)
                units.append(_Unit(e.data_key, f.pos, f.pos + f.length))
                frames_of.append([])
            frames_of[u].append(f)
            unit_of[(e.data_key, i)] = u
            last[e.data_key] = (i, u)
        # Fetch units in the order the output first needs them; emit in merge order.
        needed = [unit_of[(e.data_key, i)] for e, i in order]
        first_use: dict[int, None] = dict.fromkeys(needed)
        queue = deque(first_use)
        remaining = [len(fs) for fs in frames_of]
        pending: dict[int, Future[Any]] = {}
        ready: dict[int, dict[int, memoryview | None]] = {}
        in_flight = 0

        def submit(u: int) -> None:
            nonlocal in_flight
            unit = units[u]
            pending[u] = self._pool.submit(self._fetch_unit, unit, frames_of[u])
            in_flight += unit.end - unit.start

        for (_e, _i), u in zip(order, needed, strict=True):
            while queue and ((not pending and not ready) or in_flight < self.max_bytes):
                nxt = queue.popleft()
                if nxt not in pending and nxt not in ready:
                    submit(nxt)
            if u not in ready:
                if u not in pending:
                    submit(u)
                ready[u] = await self._wait(pending.pop(u))
            value = ready[u].get(_e.frames[_i].pos)
            if value is not None:
                self._out.append(value)
            remaining[u] -= 1
            if remaining[u] == 0:
                del ready[u]
                in_flight -= units[u].end - units[u].start
        return bool(self._out)

    def _fetch_unit(self, unit: _Unit, refs: list[FrameRef]) -> dict[int, memoryview | None]:
        try:
            data = self.store.get_range(unit.key, unit.start, unit.end)
        except ObjectMissing:
            log.warning("archive object vanished (retention?): %s", unit.key)
            return {}
        self.objects += 1
        self.bytes_read += len(data)
        values = _frame_values(data, refs, unit.start, unit.key)
        return {r.pos: v for r, v in zip(refs, values, strict=True)}


def _merge_by_time(per_node: dict[str, list[tuple[IndexEntry, int]]]) -> list[tuple[IndexEntry, int]]:
    """Each node's frames in their order, nodes interleaved by first packet time."""
    heap = [(run[0][0].frames[run[0][1]].t0, node, 0) for node, run in per_node.items()]
    heapq.heapify(heap)
    out: list[tuple[IndexEntry, int]] = []
    while heap:
        _t, node, k = heapq.heappop(heap)
        run = per_node[node]
        out.append(run[k])
        if k + 1 < len(run):
            e, i = run[k + 1]
            heapq.heappush(heap, (e.frames[i].t0, node, k + 1))
    return out


def iter_window(cfg: Config, lo_ns: int, hi_ns: int, *, nodes: Iterable[str] | None = None) -> ArchiveWindow:
    """The batch values of ``[lo_ns, hi_ns)`` in ``archive.url`` (``--source archive``)."""
    return ArchiveWindow(ArchiveStore.from_config(cfg), lo_ns, hi_ns, nodes)
