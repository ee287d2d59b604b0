"""``rawcap pcap import``: a pcap/pcapng from elsewhere into ``rawcap.packets``.

Packets become ``rec`` batches keyed by the node name, exactly as the capture agent would
ship them, with each batch's first packet time as the Kafka message timestamp (so
offsets-for-times and every window read find them). Batches close at ~1 MiB of packet data
or 8192 packets, and at a change of link type. The file is parsed in a worker thread
while the producer sends; a truncated file imports every whole packet, then fails with a
one-line error naming the byte offset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from rawcap.config import Config
from rawcap.kafka import ensure_topics
from rawcap.pcap import PcapError, Record, TruncatedCapture, read_capture
from rawcap.window import kafka_client_kwargs
from schemas import Packet, encode_batch, topics
from schemas.errors import ConfigError, RawcapError, TransportError

__all__ = ("import_capture", "iter_batches")

log = logging.getLogger("rawcap.forensics")

BATCH_BYTES = 1024 * 1024
BATCH_PACKETS = 8192


def iter_batches(
    records: Iterator[list[Record]], *, node: str, default_iface: str, first_seq: int = 1
) -> Iterator[tuple[int, bytes, int, int]]:
    """``(first_ns, batch value, packets, bytes)`` for every batch of the capture."""
    ifindex: dict[str | int, int] = {}
    names: dict[int, str] = {}
    seq = first_seq
    pending: list[Packet] = []
    size = 0
    link = -1

    def flush() -> tuple[int, bytes, int, int]:
        nonlocal seq, pending, size
        used = {p.ifindex for p in pending}
        value = encode_batch(
            node=node, seq=seq, packets=pending, ifaces={i: names[i] for i in used}, linktype=link
        )
        out = (min(p.ts_ns for p in pending), value, len(pending), size)
        seq += 1
        pending, size = [], 0
        return out

    try:
        for recs in records:
            for r in recs:
                if r.linktype != link and pending:
                    yield flush()
                link = r.linktype
                idx = ifindex.get(r.iface)
                if idx is None:
                    idx = ifindex[r.iface] = len(ifindex) + 1
                    names[idx] = (
                        r.iface
                        if isinstance(r.iface, str)
                        else (default_iface if r.iface == 0 else f"{default_iface}{r.iface}")
                    )
                pending.append(Packet(r.ts_ns, r.caplen, r.origlen, idx, 0, r.data))
                size += r.caplen
                if size >= BATCH_BYTES or len(pending) >= BATCH_PACKETS:
                    yield flush()
    except PcapError:
        # Keep every whole packet before the damage, then let the caller report it.
        if pending:
            yield flush()
        raise
    if pending:
        yield flush()


async def import_capture(
    cfg: Config,
    path: str,
    *,
    node: str | None = None,
    iface: str = "imported",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Send the capture at ``path`` to ``rawcap.packets``; returns counts for the summary."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    p = Path(path)
    if not await anyio.Path(path).is_file():
        raise ConfigError(f"{path}: no such capture file")
    try:
        fh = await anyio.to_thread.run_sync(open, path, "rb")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    node = node or p.name.split(".")[0] or p.name
    send, receive = anyio.create_memory_object_stream[tuple[int, bytes, int, int] | BaseException](16)
    stats: dict[str, Any] = {"node": node, "batches": 0, "packets": 0, "bytes": 0, "file": path}

    def produce_batches() -> None:
        try:
            for item in iter_batches(read_capture(fh, name=path), node=node, default_iface=iface):
                anyio.from_thread.run(send.send, item)
        except BaseException as exc:
            anyio.from_thread.run(send.send, exc)
        finally:
            fh.close()
            anyio.from_thread.run(send.aclose)

    await ensure_topics(cfg)
    producer = AIOKafkaProducer(**kafka_client_kwargs(cfg, "producer"))
    try:
        with anyio.fail_after(30):
            await producer.start()
    except (KafkaError, TimeoutError, OSError) as exc:
        await producer.stop()
        raise TransportError(f"cannot reach Kafka: {exc!r}") from None
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, produce_batches)
            futures = []
            async with receive:
                async for item in receive:
                    if isinstance(item, BaseException):
                        error = item
                        continue
                    first_ns, value, n, size = item
                    fut = await producer.send(
                        topics.PACKETS, value, key=node.encode(), timestamp_ms=first_ns // 1_000_000
                    )
                    futures.append(fut)
                    if len(futures) >= 64:
                        for f in futures:
                            await f
                        futures.clear()
                    stats["batches"] += 1
                    stats["packets"] += n
                    stats["bytes"] += size
                    if progress is not None:
                        progress(stats["packets"], first_ns)
            for f in futures:
                await f
        await producer.flush()
    except KafkaError as exc:
        raise TransportError(f"import into {topics.PACKETS} failed: {exc!r}") from None
    finally:
        with anyio.CancelScope(shield=True):
            await producer.stop()
    if isinstance(error, TruncatedCapture):
        raise TruncatedCapture(f"{error}; the {stats['packets']} whole packets before it were imported")
    if isinstance(error, RawcapError):
        raise error
    if error is not None:
        raise error
    return stats
