"""The project's own Kafka client for bounded reads of one topic: a thin socket driver over
``_codec.py``, with no aiokafka.

A bounded read (``rawcap pcap export``, ``consume --from --to``) needs four kinds of request,
ApiVersions, Metadata, ListOffsets and Fetch. Through aiokafka it would pay aiokafka's
imports and a consumer start with its own round trips before the first byte, and each
fetched byte would be copied twice (docs/forensics.md, bench/kafka). Here:

- :class:`WindowLookup` runs the whole Kafka side of opening a window in a thread: connect,
  ApiVersions, Metadata of the topic, the three ListOffsets of each partition leader
  (earliest, latest, first offset at a time) pipelined into one round trip, and then the
  first Fetch of every partition. ``rawcap pcap export`` starts it before the event loop and
  the rest of the command are even imported, so the broker answers while the process sets
  itself up.
- :class:`WireFetcher` (a :class:`rawcap.kafka.Fetcher`) fetches one partition, one request
  ahead, over a blocking socket of its own: the whole response is received by one
  ``recv(MSG_WAITALL)`` in a worker thread, straight into the ``bytes`` object handed on
  (``rawcap.kafka._recvbuf.new_frame``), without the GIL and without the event loop; record
  values are views into it.

:class:`AssignedFetchers` opens such fetchers for the partitions a consumer group (run by
aiokafka) assigned: the archiver reads its partitions through them, tail included.

What it does not do is aiokafka's: TLS and SASL (only ``kafka.securityProtocol: PLAINTEXT``
takes this path), group membership and commits, retries after leader changes,
Kafka-compressed batches. Any of those, or anything unexpected (an error code, a closed
connection), makes the lookup give up, or the fetcher raise ``Unsupported``, and the caller
reads with stock aiokafka's consumer instead, from the same offset (``rawcap.window``).
``kafka.readClient: aiokafka`` turns this client off.
"""

from __future__ import annotations

import importlib
import logging
import socket
import struct
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from schemas.topics import PACKETS, TOPIC_CONFIGS

from ._codec import (
    API_FETCH,
    API_LIST_OFFSETS,
    API_METADATA,
    API_VERSIONS,
    EARLIEST,
    LATEST,
    VERSIONS,
    Broker,
    FetchedRecord,
    Unsupported,
    fetch_request,
    list_offsets_request,
    metadata_request,
    node_partition,
    parse_api_versions,
    parse_fetch_response,
    parse_list_offsets,
    parse_metadata,
    parse_record_batches,
    request_header,
    string,
)

__all__ = (
    "AssignedFetchers",
    "Connection",
    "PartitionWindow",
    "WindowLookup",
    "WireFetcher",
    "enabled",
    "start_lookup",
)

log = logging.getLogger("rawcap.kafka.wire")

#: As aiokafka's consumer is set up for rawcap (``rawcap.kafka.consumer_kwargs``): a fetch
#: returns up to one largest batch of the topic per partition.
PARTITION_FETCH_BYTES = int(TOPIC_CONFIGS[PACKETS]["max.message.bytes"]) + 64 * 1024
FETCH_MAX_BYTES = 4 * PARTITION_FETCH_BYTES
#: Connecting is sub-millisecond on a LAN; a broker that does not accept within this goes to
#: aiokafka (which then reports it), and the connect is not what a slow broker makes slow.
CONNECT_TIMEOUT = 5.0
#: Any one send or receive (a fetch waits at most FETCH_MAX_WAIT_MS on the broker).
IO_TIMEOUT = 30.0
#: Responses from this size on are received into the bytes object handed on.
_IN_PLACE_MIN = 64 * 1024
_I32 = struct.Struct(">i")

_new_frame: Any = None
try:
    _new_frame = importlib.import_module("rawcap.kafka._recvbuf").new_frame
except (ImportError, AttributeError):  # not built: a frame is received into a bytearray, then copied
    pass


def enabled(cfg: Any) -> bool:
    """Whether this client may serve ``cfg``: plaintext only, and not turned off
    (``kafka.readClient``)."""
    return (cfg.get("kafka.readClient") == "auto" and cfg.get("kafka.securityProtocol") == "PLAINTEXT"
            and bool(cfg.get("kafka.bootstrap")))


# -- connection ------------------------------------------------------------------------------
class Connection:
    """One blocking socket to one broker; requests are answered in the order they were sent,
    so several may be in flight (:meth:`send` them, then :meth:`receive` each)."""

    def __init__(self, broker: Broker, client_id: str, versions: dict[int, int] | None = None) -> None:
        self.broker = broker
        sock = socket.create_connection(broker, timeout=CONNECT_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Blocking mode, bounded by the kernel's timeouts: with a Python-level timeout the
            # socket would be non-blocking and MSG_WAITALL would return whatever has arrived.
            sock.settimeout(None)
            tv = struct.pack("ll", int(IO_TIMEOUT), 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._client = string(client_id)
        self._corr = 0
        self._waiting: list[int] = []  # correlation ids sent, not received yet
        self.versions = versions if versions is not None else self._negotiate()

    def _negotiate(self) -> dict[int, int]:
        """ApiVersions v0: the highest version both sides speak of each API used here."""
        self.send(API_VERSIONS, 0, b"")
        ranges = parse_api_versions(*self.receive())
        out = {}
        for key, (ours_lo, ours_hi) in VERSIONS.items():
            lo, hi = ranges.get(key, (0, -1))
            v = min(hi, ours_hi)
            if v < max(lo, ours_lo):
                raise Unsupported(f"the broker speaks API {key} v{lo}-v{hi}, this client "
                                  f"v{ours_lo}-v{ours_hi}")
            out[key] = v
        return out

    def send(self, api: int, version: int, body: bytes) -> None:
        self._corr += 1
        header = request_header(api, version, self._corr, self._client)
        self._sock.sendall(_I32.pack(len(header) + len(body)) + header + body)
        self._waiting.append(self._corr)

    def receive(self) -> tuple[bytes, int]:
        """The next response: (frame, where its body starts)."""
        size = _I32.unpack(self._recv(4))[0]
        frame = self._recv(size)
        corr = _I32.unpack_from(frame)[0] if size >= 4 else None
        if not self._waiting or corr != self._waiting.pop(0):
            raise Unsupported(f"response {corr} out of order")
        return frame, 4

    def request(self, api: int, version: int, body: bytes) -> tuple[bytes, int]:
        self.send(api, version, body)
        return self.receive()

    def _recv(self, n: int) -> bytes:
        """Exactly ``n`` bytes: one ``recv(MSG_WAITALL)`` (GIL released) unless a signal or
        the kernel's timeout cuts it."""
        if n >= _IN_PLACE_MIN and _new_frame is not None:
            frame, view = _new_frame(n)
        else:
            frame = bytearray(n)
            view = memoryview(frame)
        try:
            got = 0
            while got < n:
                k = self._sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)
                if k == 0:
                    raise Unsupported("the broker closed the connection")
                got += k
        finally:
            view.release()
        return frame if isinstance(frame, bytes) else bytes(frame)

    def close(self) -> None:
        """Close; a receive blocked in another thread returns at once (and fails)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


# -- window lookup ---------------------------------------------------------------------------
class PartitionWindow(NamedTuple):
    """One partition of a bounded read: its offsets now and where the read starts."""

    partition: int
    begin: int
    end: int
    #: (offset, timestamp ms) of the first record at or after the lookup's time; None: none
    found: tuple[int, int] | None

    @property
    def start(self) -> int:
        return self.found[0] if self.found is not None else self.end


def _bootstrap(servers: list[str], client_id: str) -> Connection:
    last: Exception | None = None
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            return Connection(Broker(host.strip("[]") or server, int(port or 9092)), client_id)
        except (OSError, ValueError) as exc:
            last = exc
    raise Unsupported(f"no bootstrap server answered: {last!r}")


class WindowLookup:
    """The Kafka side of opening a bounded read of ``topic``, in a thread of its own:
    partitions (those of ``nodes``, or all), their offsets, and the first fetch of each
    already sent. :meth:`result` waits for it; None there means: read with aiokafka."""

    def __init__(self, cfg: Any, lo_ms: int, nodes: Iterable[str] | None, topic: str = PACKETS) -> None:
        self.lo_ms = lo_ms
        self.nodes = frozenset(nodes) if nodes else None
        self.topic = topic
        self._servers = [s.strip() for s in str(cfg.get("kafka.bootstrap")).split(",") if s.strip()]
        self._client_id = cfg.get("kafka.clientId") or "rawcap"
        self.partition_count = 0
        self.partitions: list[PartitionWindow] = []
        self._fetchers: dict[int, WireFetcher] = {}
        self._conns: list[Connection] = []
        self._pool: ThreadPoolExecutor | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rawcap-kafka-lookup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._lookup()
        except Exception as exc:  # whatever it is, aiokafka's consumer reads instead
            self._error = exc
            self._release()

    def _bootstrap(self) -> Connection:
        return _bootstrap(self._servers, self._client_id)

    def _connect(self, broker: Broker, versions: dict[int, int] | None = None) -> Connection:
        conn = Connection(broker, self._client_id, versions)
        with self._lock:
            self._conns.append(conn)
            closed = self._closed
        if closed:
            raise Unsupported("closed")
        return conn

    def _lookup(self) -> None:
        boot = self._bootstrap()
        with self._lock:
            self._conns.append(boot)
        v = boot.versions
        buf, pos = boot.request(API_METADATA, v[API_METADATA], metadata_request(v[API_METADATA], self.topic))
        meta = parse_metadata(v[API_METADATA], buf, pos, self.topic)
        n = self.partition_count = len(meta.leaders)
        if sorted(meta.leaders) != list(range(n)):
            raise Unsupported(f"partitions of {self.topic} are not 0..{n - 1}")
        wanted = sorted({node_partition(x, n) for x in self.nodes}) if self.nodes else list(range(n))
        by_leader: dict[int, list[int]] = {}
        for p in wanted:
            by_leader.setdefault(meta.leaders[p], []).append(p)
        # Each partition is fetched over a connection of its own (one blocking request at a
        # time); the lookups go to each leader over the first of them.
        conns: dict[int, Connection] = {}
        versions: dict[Broker, dict[int, int]] = {boot.broker: boot.versions}
        for leader, parts in by_leader.items():
            broker = meta.brokers[leader]
            for p in parts:
                if p == parts[0] and broker == boot.broker and boot not in conns.values():
                    conns[p] = boot
                else:
                    conns[p] = self._connect(broker, versions.get(broker))
                    versions[broker] = conns[p].versions
        if boot not in conns.values():
            boot.close()
        found: dict[int, dict[int, tuple[int, int]]] = {}
        for parts in by_leader.values():
            conn = conns[parts[0]]
            lv = conn.versions[API_LIST_OFFSETS]
            asks = (EARLIEST, LATEST, self.lo_ms)
            for ts in asks:  # pipelined: three lookups, one round trip
                conn.send(API_LIST_OFFSETS, lv, list_offsets_request(lv, self.topic, parts, ts))
            for ts in asks:
                buf, pos = conn.receive()
                got = parse_list_offsets(lv, buf, pos, self.topic)
                if set(got) != set(parts):
                    raise Unsupported("the offsets response misses a partition")
                found[ts] = {**found.get(ts, {}), **got}
        pool = ThreadPoolExecutor(max_workers=max(1, len(wanted)), thread_name_prefix="rawcap-kafka-fetch")
        with self._lock:
            self._pool = pool
            if self._closed:
                raise Unsupported("closed")
        for p in wanted:
            at_time = found[self.lo_ms][p]
            pw = PartitionWindow(p, found[EARLIEST][p][1], found[LATEST][p][1],
                                 (at_time[1], at_time[0]) if at_time[1] >= 0 else None)
            self.partitions.append(pw)
            fetcher = WireFetcher(conns[p], self.topic, p, pool)
            self._fetchers[p] = fetcher
            if pw.start < pw.end:
                fetcher.start(pw.start)  # the broker reads it while the caller is still setting up

    def finished(self) -> bool:
        """Whether :meth:`result` would return at once."""
        return not self._thread.is_alive()

    def result(self, timeout: float = IO_TIMEOUT + CONNECT_TIMEOUT) -> WindowLookup | None:
        """Wait for the lookup: self when it worked, None (and nothing left open) otherwise."""
        self._thread.join(timeout)
        if self._thread.is_alive() or self._error is not None:
            log.debug("Kafka lookup left to aiokafka: %r", self._error or "timed out")
            self.close()
            return None
        return self

    def fetcher(self, partition: int) -> WireFetcher:
        """The partition's fetcher, its first fetch in flight when there is anything to read."""
        return self._fetchers[partition]

    def _release(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
            pool, self._pool = self._pool, None
        for conn in conns:
            conn.close()
        if pool is not None:
            pool.shutdown(wait=True)

    def close(self) -> None:
        """Close every connection and stop the fetch threads (idempotent)."""
        self._release()


def start_lookup(cfg: Any, lo_ms: int, nodes: Iterable[str] | None) -> WindowLookup | None:
    """A :class:`WindowLookup` under way, or None when this client does not serve ``cfg``."""
    return WindowLookup(cfg, lo_ms, nodes) if enabled(cfg) else None


# -- fetch -----------------------------------------------------------------------------------
class WireFetcher:
    """One partition over its own connection, one request ahead (a ``rawcap.kafka.Fetcher``):
    the request is sent and its response received in a worker thread (one ``recv`` of the whole
    frame, GIL released) while the event loop decodes the previous one."""

    def __init__(self, conn: Connection, topic: str, partition: int, pool: ThreadPoolExecutor) -> None:
        self._conn, self._topic, self._partition, self._pool = conn, topic, partition, pool
        self._version = conn.versions[API_FETCH]
        self._job: Future[tuple[bytes, int]] | None = None
        self._offset = 0
        #: The partition's high watermark as of the last response (-1: none yet).
        self.highwater = -1

    def _exchange(self, offset: int) -> tuple[bytes, int]:
        return self._conn.request(API_FETCH, self._version, fetch_request(
            self._version, self._topic, self._partition, offset,
            partition_bytes=PARTITION_FETCH_BYTES, max_bytes=FETCH_MAX_BYTES))

    def start(self, offset: int) -> None:
        """Send the fetch for ``offset`` (the first one; :meth:`next` sends the others)."""
        self._offset = offset
        self._job = self._pool.submit(self._exchange, offset)

    async def next(self, stop: int) -> tuple[list[FetchedRecord], int]:
        """The records of the fetch in flight and the next offset; fetches on from there
        unless it reached ``stop``. Raises Unsupported (then nothing is in flight)."""
        import asyncio  # here, not at the top: the lookup starts before asyncio is imported

        assert self._job is not None, "start() first"
        job, self._job = self._job, None
        try:
            buf, pos = await asyncio.wrap_future(job)
        except OSError as exc:
            raise Unsupported(f"fetch failed: {exc!r}") from None
        recs: list[FetchedRecord]
        for topic, partition, err, records, hw in parse_fetch_response(buf, pos, self._version):
            if topic == self._topic and partition == self._partition:
                if err:
                    raise Unsupported(f"partition error code {err}")
                self.highwater = hw
                if records is None:
                    recs, nxt = [], self._offset
                else:
                    recs, nxt = parse_record_batches(records, self._offset)
                break
        else:
            raise Unsupported("the response does not hold the partition")
        if nxt < stop:
            self.start(nxt)
        return recs, nxt

    def cancel(self) -> None:
        """Done with this partition: the connection closes (a response still in flight with it)."""
        self._job = None
        self._conn.close()


class AssignedFetchers:
    """:class:`WireFetcher` s for partitions of one topic that a consumer group assigned to
    its caller, opened one at a time from the offset the group resumes at (the archiver: the
    group decides who reads what and holds the commits; the bytes come through this client).

    :meth:`open` blocks (metadata, a connection to the partition's leader, the first fetch
    sent): call it in a worker thread. It raises ``Unsupported`` (or ``OSError``) where the
    caller must read with aiokafka instead; so does a fetcher's ``next`` later (a leader
    change, an offset out of range).
    """

    def __init__(self, cfg: Any, topic: str = PACKETS) -> None:
        self.topic = topic
        self._servers = [s.strip() for s in str(cfg.get("kafka.bootstrap")).split(",") if s.strip()]
        self._client_id = cfg.get("kafka.clientId") or "rawcap"
        # A fetcher's worker blocks up to FETCH_MAX_WAIT_MS on an idle partition: one each.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="rawcap-kafka-fetch")
        self._versions: dict[Broker, dict[int, int]] = {}

    def open(self, partition: int, offset: int) -> WireFetcher:
        boot = _bootstrap(self._servers, self._client_id)
        try:
            mv = boot.versions[API_METADATA]
            buf, pos = boot.request(API_METADATA, mv, metadata_request(mv, self.topic))
            meta = parse_metadata(mv, buf, pos, self.topic)
        finally:
            boot.close()
        if partition not in meta.leaders:
            raise Unsupported(f"no leader known for {self.topic}/{partition}")
        broker = meta.brokers[meta.leaders[partition]]
        conn = Connection(broker, self._client_id, self._versions.get(broker))
        self._versions[broker] = conn.versions
        fetcher = WireFetcher(conn, self.topic, partition, self._pool)
        fetcher.start(offset)
        return fetcher

    def close(self) -> None:
        """Stop the fetch threads (after every fetcher was cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
