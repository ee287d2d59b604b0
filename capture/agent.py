"""The capture agent: one root task group owning every stage.

::

    ring thread (TPACKET_V3 + eBPF filter, whole blocks -> zstd batches -> FIFO segments)
        --notify--> shipper (rawcap.packets, acks=all, idempotent)
    control follower (rawcap.control -> eBPF maps)     procs thread (tracepoints -> rawcap.procs)
    stats loop (PACKET_STATISTICS, filter counters, buffer gauges; interface rescan)

Blocking work (ring waits, FIFO writes, bcc polling) runs in worker threads. The ring
thread appends each batch to the FIFO itself (a hand-off to the event loop per batch cost
two context switches and a task) and only wakes the shipper. While the shipper is
connected the FIFO holds batches in memory until Kafka acknowledges them
(``capture.memoryBuffer``, ``capture.spillAfter``), so a healthy broker costs the node no
disk writes. A slow broker or disk pushes back on the ring (whose overflow the kernel
counts as drops) rather than growing memory. On SIGTERM/SIGINT or at
``--duration`` the ring thread flushes its open batch, the FIFO writer drains, and the
shipper gets a bounded time to deliver what is left; unshipped batches stay on disk for
the next start.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from rawcap.config import Config, ConfigError
from rawcap.malloc import trim as malloc_trim
from rawcap.malloc import tune as malloc_tune
from schemas.control import CaptureFilter
from schemas.topics import MAX_MESSAGE_BYTES

from ._batcher import BlockBatcher, ClosedBatch
from ._fifo import Fifo
from ._filter import FilterUnavailable, KernelFilter
from ._ifaces import IfaceSelection, resolve
from ._metrics import Metrics
from ._netns import in_netns
from ._ring import Ring

__all__ = ("STALL_AFTER", "STARTUP_LIMIT", "Agent", "Summary", "liveness")

log = logging.getLogger("rawcap.capture")

#: Time the shipper gets at shutdown to deliver what is still in the FIFO.
DRAIN_TIMEOUT = 10.0
#: Batch header + Kafka record overhead + zstd's worst-case expansion, with room to spare.
_HEADER_ROOM = 256 * 1024
_RESCAN_EVERY = 5.0
_GC_YOUNG = 20_000
#: /live fails when the ring thread or the event loop has not gone round for this long
#: (the ring thread wakes at least every 0.2 s, the stats loop every second).
STALL_AFTER = 30.0
#: ... or when the agent is still not capturing this long after it started (eBPF compilation
#: takes 2-6 s; a hung compile or ring setup is caught here).
STARTUP_LIMIT = 180.0


def _age(beat: float | None) -> float | None:
    return None if beat is None else time.monotonic() - beat


def liveness(uptime: float, phase: str, stopping: bool, ring_age: float | None,
             loop_age: float | None) -> tuple[bool, str]:
    """The agent's /live answer: alive unless the ring thread (``ring_age``: seconds since it
    last went round, None before it started) or the event loop has stalled for
    ``STALL_AFTER`` seconds, or it is still not capturing ``STARTUP_LIMIT`` seconds after it
    started (a hung eBPF compile or ring setup)."""
    if stopping:
        return True, "stopping"
    if ring_age is None:
        if uptime > STARTUP_LIMIT:
            return False, f"still {phase} after {uptime:.0f} s"
        return True, f"starting: {phase}"
    for what, age in (("ring thread", ring_age), ("event loop", loop_age)):
        if age is not None and age > STALL_AFTER:
            return False, f"{what} stalled for {age:.0f} s"
    return True, "ok"


@dataclass
class Summary:
    """What one run of the agent did. Its packets split exactly (docs/capture.md, "Loss"):
    ``kernel_packets = kernel_drops + packets`` and, with Kafka,
    ``packets = shipped_packets + lost_packets + unshipped_packets``: every packet the
    socket saw was dropped by the kernel (ring full), delivered, recycled before Kafka took
    it (or refused by a full disk), or is still in the buffer for the next start."""

    node: str
    seconds: float = 0.0
    packets: int = 0
    raw_bytes: int = 0
    batches: int = 0
    shipped: int = 0
    shipped_packets: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    filter_rejected: int = 0
    lost_batches: int = 0
    lost_packets: int = 0
    unshipped: int = 0
    unshipped_packets: int = 0
    first_seq: int = 0
    last_seq: int = 0

    def line(self) -> str:
        return (f"capture summary: node={self.node} seconds={self.seconds:.1f} "
                f"packets={self.packets} ring_bytes={self.raw_bytes} batches={self.batches} "
                f"seq={self.first_seq}-{self.last_seq} shipped={self.shipped} "
                f"unshipped={self.unshipped} kernel_drops={self.kernel_drops} "
                f"filtered_out={self.filter_rejected} lost_batches={self.lost_batches} "
                f"lost_packets={self.lost_packets} kernel_packets={self.kernel_packets} "
                f"shipped_packets={self.shipped_packets} unshipped_packets={self.unshipped_packets}")


def _check_batch_fits(cfg: Config) -> None:
    """A batch body is at most max(maxBytes, blockSize) (capture/_batcher.py); with its
    header it must fit one Kafka record of ``rawcap.packets``, or the shipper would retry
    a record the broker always refuses."""
    body = max(int(cfg.get("capture.batch.maxBytes")), int(cfg.get("capture.ring.blockSize")))
    if body + _HEADER_ROOM > MAX_MESSAGE_BYTES:
        raise ConfigError(
            f"capture.batch.maxBytes and capture.ring.blockSize must stay below "
            f"{(MAX_MESSAGE_BYTES - _HEADER_ROOM) / 2**20:g} MiB: a batch of {body} bytes would not "
            f"fit rawcap.packets' max.message.bytes ({MAX_MESSAGE_BYTES})")


class Agent:
    """Build with a :class:`Config` (CLI flags already folded in); ``await run()``."""

    def __init__(self, cfg: Config, *, procs: bool | None = None, netns: str | None = None) -> None:
        malloc_tune()  # MiB-sized buffers from the heap, not fresh mmap pages (rawcap/malloc.py)
        _check_batch_fits(cfg)
        self.cfg = cfg
        self.netns = netns
        self.node = cfg.node
        self.kafka = bool(cfg.get("capture.kafka")) and bool(cfg.get("kafka.bootstrap"))
        self.metrics = Metrics(self.node)
        self.summary = Summary(self.node)
        # Health (/ready, /live on the metrics port): what the agent is doing, and when the
        # ring thread and the event loop last went round.
        self._phase = "compiling the eBPF programs"
        self._started = time.monotonic()
        self._ring_beat: float | None = None
        self._loop_beat: float | None = None
        self._control_synced = not self.kafka
        # Stop requests: ``_stop`` for the ring thread, ``_stop_async`` (set on the loop, via
        # ``call_soon_threadsafe`` when the request comes from another thread) for the tasks.
        self._stop = threading.Event()
        self._stop_async: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        port = int(cfg.get("metrics.port"))
        if port:  # up before the slow part, so that /ready says what the agent waits for
            try:
                self.metrics.serve(port, ready=self.ready, live=self.live)
            except OSError as exc:
                raise ConfigError(f"metrics.port: cannot listen on {port}: {exc.strerror or exc}") from None
        try:
            with in_netns(netns):
                self.selection: IfaceSelection = resolve(cfg.get("capture.iface"))
            self.ifaces: dict[int, str] = dict(self.selection.ifaces)
            # Probe everything that can fail before the first packet: bcc, headers, privileges.
            self.filter = KernelFilter(snaplen=int(cfg.get("capture.snaplen")))
            self.ring: Ring | None = None
            self.fifo: Fifo | None = None
            self.shipper: Any = None
            self.procs: Any = None
            self._want_procs = self.kafka if procs is None else procs
            if self._want_procs and self.kafka:
                from ._procs import ProcsTracer
                self._phase = "compiling the process-context eBPF programs"
                try:
                    self.procs = ProcsTracer(cfg, self.node, self.metrics)
                except FilterUnavailable as exc:
                    log.warning("process context disabled: %s", exc)
        except BaseException:
            self.metrics.close()
            raise
        # LLVM's compile heap is freed now but glibc would keep it resident (tens of MiB).
        malloc_trim()
        self._phase = "opening the ring"

    # --- public -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the agent to flush and exit (thread-safe)."""
        self._stop.set()
        loop, stop_async = self._loop, self._stop_async
        if loop is not None and stop_async is not None:
            try:
                loop.call_soon_threadsafe(stop_async.set)
            except RuntimeError:
                pass  # the loop has already closed: the agent is done

    def ready(self) -> tuple[bool, str]:
        """Ready once the ring, with the eBPF filter attached, is taking packets and (with
        Kafka) this node's capture filter from rawcap.control is applied."""
        if self._stop.is_set():
            return False, "stopping: flushing the buffer"
        if self._ring_beat is None:
            return False, f"starting: {self._phase}"
        if not self._control_synced:
            return False, "waiting for the capture filters in rawcap.control (Kafka)"
        return True, f"capturing on {','.join(sorted(self.ifaces.values()))}"

    def live(self) -> tuple[bool, str]:
        """See :func:`liveness`."""
        return liveness(time.monotonic() - self._started, self._phase, self._stop.is_set(),
                        _age(self._ring_beat), _age(self._loop_beat))

    def _control_caught_up(self) -> None:
        self._control_synced = True

    def apply_filter(self, f: CaptureFilter) -> None:
        self.filter.apply(f)
        self.metrics.filter_version.set(f.version)

    async def run(self, duration: float | None = None) -> Summary:
        cfg = self.cfg
        self._stop_async = anyio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stop.is_set():  # stop() came before the loop was known
            self._stop_async.set()
        started = time.monotonic()
        if self.selection.single is None:
            self.filter.set_ifaces(set(self.ifaces))
        self.fifo = Fifo(cfg.get("capture.bufferDir"), self.node,
                         budget=int(cfg.get("tap.capture.raw.storageSize")),
                         segment_size=int(cfg.get("capture.segmentSize")),
                         hold_bytes=int(cfg.get("capture.memoryBuffer")) if self.kafka else 0,
                         hold_for=float(cfg.get("capture.spillAfter")))
        self.summary.first_seq = self.fifo.next_seq
        try:
            with in_netns(self.netns):
                self.ring = self._open_ring()
            if self.kafka:
                from ._shipper import Shipper
                self.shipper = Shipper(cfg, self.fifo, self.metrics)
            # Everything loaded so far (bcc, aiokafka, modules) lives as long as the agent:
            # keep it out of the collector's scans, and collect young objects less often
            # (aiokafka allocates a few hundred per request). 3% of the agent's CPU at 64 B.
            gc.freeze()
            gc.set_threshold(_GC_YOUNG, 20, 20)
            log.info("capture running", extra={
                "node": self.node, "ifaces": ",".join(sorted(self.ifaces.values())),
                "kafka": self.kafka, "buffer": str(self.fifo.dir), "next_seq": self.fifo.next_seq})
            await self._run_tasks(duration)
        finally:
            self._finish(time.monotonic() - started)
        return self.summary

    def _open_ring(self) -> Ring:
        cfg = self.cfg
        return Ring(
            ifindex=self.selection.single or 0,
            block_size=int(cfg.get("capture.ring.blockSize")),
            block_count=int(cfg.get("capture.ring.blockCount")),
            block_timeout_ms=int(cfg.get("capture.ring.blockTimeout") * 1000),
            bpf_fd=self.filter.fd,
        )

    # --- tasks ------------------------------------------------------------------------

    async def _run_tasks(self, duration: float | None) -> None:
        assert self.fifo is not None and self._stop_async is not None
        stop_async = self._stop_async
        async with anyio.create_task_group() as root:
            root.start_soon(self._signals)
            root.start_soon(self._stats_loop)
            if self.kafka:
                from ._control import ControlFollower
                root.start_soon(ControlFollower(self.cfg, self.node, self.apply_filter,
                                                on_synced=self._control_caught_up).run)
            ship_scope = anyio.CancelScope()
            if self.shipper is not None:
                root.start_soon(self._ship, ship_scope)
            if self.procs is not None:
                root.start_soon(self.procs.run)

            if self.shipper is not None:
                # The ring thread appends; the shipper's wake-up must run on the loop.
                loop, notify = asyncio.get_running_loop(), self.shipper.notify

                def wake_shipper() -> None:
                    loop.call_soon_threadsafe(notify)

                self.fifo.on_append = wake_shipper
            async with anyio.create_task_group() as pipe:
                pipe.start_soon(self._ring_thread)
                with anyio.move_on_after(duration if duration else float("inf")):
                    await stop_async.wait()
                self._stop.set()
            # Pipeline drained: every captured batch is in the FIFO. Give the shipper a
            # bounded time to deliver the rest; fifo.close() writes what is left to disk
            # for the next start.
            if self.shipper is not None:
                ship_scope.cancel()
                with anyio.move_on_after(DRAIN_TIMEOUT):
                    await self.shipper.run(until_caught_up=True)
            root.cancel_scope.cancel()

    async def _ship(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self.shipper.run()

    async def _signals(self) -> None:
        assert self._stop_async is not None
        try:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal received, flushing", extra={"signal": signal.Signals(signum).name})
                    self._stop.set()
                    self._stop_async.set()
                    return
        except (ValueError, NotImplementedError):
            pass  # not the main thread (tests): they call agent.stop()

    async def _ring_thread(self) -> None:
        await anyio.to_thread.run_sync(self._ring_loop)

    def _ring_loop(self) -> None:
        """Worker thread: wait for retired blocks, compress them into batches, append them."""
        ring = self.ring
        assert ring is not None and self.fifo is not None
        batcher = BlockBatcher(
            node=self.node, next_seq=self.fifo.next_seq, ifaces=lambda: dict(self.ifaces),
            max_bytes=int(self.cfg.get("capture.batch.maxBytes")),
            max_delay=float(self.cfg.get("capture.batch.maxDelay")),
            level=int(self.cfg.get("capture.zstdLevel")),
            codec=str(self.cfg.get("capture.codec")),
            snaplen=int(self.cfg.get("capture.snaplen")),
        )
        out: list[ClosedBatch] = []

        def consume(block: memoryview) -> None:
            out.extend(batcher.add_block(block))

        flush_window = float(self.cfg.get("capture.ring.blockTimeout")) * 2 + 0.1
        deadline: float | None = None
        self._phase = "capturing"
        while True:
            self._ring_beat = time.monotonic()
            if deadline is None and self._stop.is_set():
                # No packet enters after this (so the split of the summary is exact); the
                # kernel retires the open block after blockTimeout: wait for it (or, when it
                # holds nothing, stop at once).
                try:
                    ring.stop_receiving()
                except OSError as exc:  # the interface went away: nothing more comes anyway
                    log.debug("unhooking the ring: %s", exc)
                deadline = time.monotonic() + flush_window
            ring.wait(50 if deadline else 200)
            ring.take(consume)
            if batcher.due():
                b = batcher.close()
                if b is not None:
                    out.append(b)
            done = deadline is not None and (ring.drained() or time.monotonic() >= deadline)
            if done:
                ring.take(consume)  # a block retired since the take above
                b = batcher.close()
                if b is not None:
                    out.append(b)
            for b in out:
                self._append(b)
            out.clear()
            self.fifo.spill()  # held batches Kafka has not acknowledged in time go to disk
            if done:
                return

    def _append(self, batch: ClosedBatch) -> None:
        """Ring thread: one batch to the FIFO. A full disk is absorbed there (recycle, else
        count the batch lost); any other ``OSError`` ends the ring thread, and with it the
        agent, with that error."""
        fifo, m = self.fifo, self.metrics
        assert fifo is not None
        fifo.append(batch)
        m.batches_written.inc()
        m.packets.inc(batch.count)
        m.bytes.inc(batch.raw_bytes)
        self.summary.packets += batch.count
        self.summary.raw_bytes += batch.raw_bytes
        self.summary.batches += 1

    async def _stats_loop(self) -> None:
        last_scan = time.monotonic()
        while True:
            self._loop_beat = time.monotonic()
            self._update_stats()
            await anyio.sleep(1.0)
            if self.selection.dynamic and time.monotonic() - last_scan >= _RESCAN_EVERY:
                last_scan = time.monotonic()
                try:
                    with in_netns(self.netns):
                        sel = resolve(self.selection.spec)
                except Exception as exc:  # interfaces vanish while we look; try again later
                    log.debug("interface rescan failed: %s", exc)
                    continue
                if sel.ifaces != self.ifaces:
                    log.info("interfaces changed", extra={"ifaces": ",".join(sorted(sel.ifaces.values()))})
                    self.filter.set_ifaces(set(sel.ifaces))
                    self.ifaces = dict(sel.ifaces)

    def _update_stats(self) -> None:
        m, fifo = self.metrics, self.fifo
        m.update_rss()
        if self.ring is not None:
            try:
                st = self.ring.read_stats()
                m.kernel_packets.set(st.packets)
                m.kernel_drops.set(st.drops)
                m.kernel_freezes.set(st.freezes)
            except OSError:
                pass
        m.filter_rejected.set(self.filter.counters()[2])
        if fifo is not None:
            fifo.sync_state()
            m.buffer_bytes.set(fifo.total_bytes)
            m.memory_bytes.set(fifo.held_bytes)
            m.lost_batches.set(fifo.lost_batches)
            m.lost_packets.set(fifo.lost_packets)
            m.lost_bytes.set(fifo.lost_bytes)
            m.run_lost_packets.set(fifo.run_lost_packets)
            if self.kafka:
                m.run_shipped_packets.set(fifo.run_shipped_packets)
                # (what the ring thread appended, less the rest of the split: the summary
                # counts the buffer's entries instead, which costs a walk of every segment)
                m.run_unshipped_packets.set(max(
                    0, self.summary.packets - fifo.run_shipped_packets - fifo.run_lost_packets))
            m.ship_lag_batches.set(fifo.last_seq - fifo.acked_seq if self.kafka else 0)
            if self.shipper is not None:
                m.ship_lag_seconds.set(self.shipper.lag_seconds())

    def _finish(self, seconds: float) -> None:
        s = self.summary
        s.seconds = seconds
        try:
            if self.fifo is not None:
                # A send still unacknowledged now has an unknown outcome: batches it carried
                # whose segment was recycled meanwhile count as lost (Kafka may yet have them).
                self.fifo.abandon_in_flight()
            self._update_stats()
        except Exception:  # best effort; the ring may already be gone
            pass
        if self.ring is not None:
            self.ring.close()
            s.kernel_packets, s.kernel_drops = self.ring.stats.packets, self.ring.stats.drops
            self.ring = None
        s.filter_rejected = self.filter.counters()[2]
        self.filter.close()
        if self.procs is not None:
            self.procs.close()
        fifo = self.fifo
        if fifo is not None:
            s.last_seq = fifo.last_seq
            s.lost_batches, s.lost_packets = fifo.run_lost_batches, fifo.run_lost_packets
            if self.kafka:
                s.unshipped, s.unshipped_packets = fifo.run_pending()
                s.shipped, s.shipped_packets = fifo.run_shipped_batches, fifo.run_shipped_packets
            fifo.close()
        self.metrics.close()
