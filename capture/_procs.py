"""Process context: tracepoint events (bcc ring buffer) -> ``rawcap.procs`` records.

A thread of the tracer's own polls the bcc ring buffer (a blocking call) and turns each
event into a :class:`schemas.procs.ProcRecord`, resolving the cgroup path
(``/proc/<pid>/cgroup``, else the cgroup v2 inode walk) and the container id. Records pass
to the publisher task through a bounded memory object stream (fed on the loop, see
:meth:`ProcsTracer._poll`); when Kafka is slow the stream fills and records are dropped and
counted (``rawcap_capture_procs_dropped``) rather than slowing capture. :meth:`ProcsTracer.close`
stops the thread and joins it before it frees the BPF program the thread polls. Process
context is an enrichment, so a machine without tracefs or tracepoints logs one warning and
captures without it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from anyio.streams.memory import MemoryObjectSendStream

from rawcap.config import Config
from rawcap.kafka import producer_kwargs
from schemas.procs import ProcRecord, parse_container
from schemas.topics import PROCS

from ._filter import CAP_BPF, CAP_PERFMON, FilterUnavailable, _Quiet, load_bcc, require_caps

__all__ = ("ProcsTracer", "cgroup_v2_root")

log = logging.getLogger("rawcap.capture")

_KINDS = {1: "tcp", 2: "listen", 3: "connect", 4: "udp"}
#: ``ring_buffer_poll`` returns at least this often (ms): how long a stop waits for the thread.
_POLL_MS = 200
#: How long :meth:`ProcsTracer.close` waits for the poll thread before giving up on freeing
#: the BPF program (a poll never takes this long).
_JOIN_TIMEOUT = 10.0
_CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def cgroup_v2_root() -> str | None:
    for root in _CGROUP_ROOTS:
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            return root
    return None


def _addr(family: int, raw: bytes) -> str:
    if family == 2:
        return str(ipaddress.IPv4Address(raw[12:16]))
    if family == 10:
        return str(ipaddress.IPv6Address(raw))
    return ""


class _Cgroups:
    """cgroup id -> path. The id of a cgroup v2 directory is its inode number."""

    def __init__(self) -> None:
        self.root = cgroup_v2_root()
        self._by_id: dict[int, str] = {}
        self._last_walk = 0.0

    def _walk(self) -> None:
        if not self.root or time.monotonic() - self._last_walk < 1.0:
            return
        self._last_walk = time.monotonic()
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            self._by_id[ino] = "/" + os.path.relpath(dirpath, self.root).lstrip(".")

    def path(self, cgroup_id: int, pid: int) -> str:
        if cgroup_id in self._by_id:
            return self._by_id[cgroup_id]
        try:
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    p = line[3:]
                    if self.root and os.path.exists(self.root + p) and \
                            os.stat(self.root + p).st_ino == cgroup_id:
                        self._by_id[cgroup_id] = p
                        return p
        except OSError:
            pass
        self._walk()
        return self._by_id.get(cgroup_id, "")


def _ensure_tracefs() -> None:
    """bcc finds tracepoint ids under tracefs; many hosts (and containers) do not mount it.

    With CAP_SYS_ADMIN the agent mounts it itself, as ``mount -t tracefs`` would; without,
    the caller gets one line saying what to mount (a DaemonSet mounts it as a hostPath).
    """
    if os.path.isdir("/sys/kernel/tracing/events") or os.path.isdir("/sys/kernel/debug/tracing/events"):
        return
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not os.path.isdir("/sys/kernel/tracing/events"):
        raise FilterUnavailable("tracefs is not mounted and could not be mounted "
                                "(mount -t tracefs nodev /sys/kernel/tracing)")


class ProcsTracer:
    """Loads the tracepoint program at construction (fail fast), runs with ``run()``."""

    def __init__(self, cfg: Config, node: str, metrics: Any) -> None:
        bcc = load_bcc()
        require_caps("process context (tracepoints)", CAP_BPF, CAP_PERFMON)
        _ensure_tracefs()
        text = Path(__file__).with_name("_procs.c").read_bytes()
        try:
            with _Quiet():
                self._bpf = bcc.BPF(text=text, cflags=["-w"])
        except Exception as exc:
            raise FilterUnavailable(f"cannot load the process-context tracepoints: "
                                    f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        self.cfg, self.node, self.metrics = cfg, node, metrics
        self.cgroups = _Cgroups()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # the poll thread, joined by close()
        self._mono_to_wall = time.time_ns() - time.monotonic_ns()
        self._polled: list[ProcRecord] = []  # by _event, during one ring_buffer_poll

    def _event(self, _ctx: Any, data: Any, _size: int) -> None:
        e = self._bpf[b"events"].event(data)
        kind = _KINDS.get(int(e.kind))
        if kind is None:
            return
        pid = int(e.pid)
        path = self.cgroups.path(int(e.cgroup), pid)
        cid, runtime, pod = parse_container(path)
        family = int(e.family)
        rec = ProcRecord(
            ts_ns=int(e.ts) + self._mono_to_wall, node=self.node, kind=kind, pid=pid,
            tid=int(e.tid), comm=bytes(e.comm).split(b"\0", 1)[0].decode(errors="replace"),
            cgroup_id=int(e.cgroup), cgroup_path=path, container_id=cid, runtime=runtime,
            pod_uid=pod, proto=int(e.proto), saddr=_addr(family, bytes(e.saddr)),
            sport=int(e.sport), daddr=_addr(family, bytes(e.daddr)), dport=int(e.dport),
        )
        self._polled.append(rec)

    def _poll(self, loop: asyncio.AbstractEventLoop, send: MemoryObjectSendStream[ProcRecord]) -> None:
        """Worker thread: poll the ring buffer, hand each poll's records to the event loop.

        The hand-off is ``call_soon_threadsafe``: a stream fed from this thread directly
        does not wake an idle loop, and the records would wait for whatever woke it next
        (seconds later), after enrich had published the flows they belong to.
        """
        self._bpf[b"events"].open_ring_buffer(self._event)
        while not self._stop.is_set():
            self._bpf.ring_buffer_poll(_POLL_MS)
            items, self._polled = self._polled, []
            if items:
                try:
                    loop.call_soon_threadsafe(self._hand_off, send, items)
                except RuntimeError:  # the event loop is closed
                    return

    def _hand_off(self, send: MemoryObjectSendStream[ProcRecord], items: list[ProcRecord]) -> None:
        """In the event loop: queue ``items`` for the publisher, counting what does not fit."""
        for rec in items:
            try:
                send.send_nowait(rec)
            except anyio.WouldBlock:
                self.metrics.procs_dropped.inc()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._stop.set()
                return

    async def run(self) -> None:
        """Poll (in the tracer's thread) and publish until cancelled; the thread is told to
        stop on the way out, and :meth:`close` joins it."""
        send, recv = anyio.create_memory_object_stream[ProcRecord](4096)
        loop = asyncio.get_running_loop()
        ended = anyio.Event()
        failure: list[BaseException] = []

        def poll() -> None:
            try:
                self._poll(loop, send)
            except BaseException as exc:  # re-raised by run()
                failure.append(exc)
            finally:
                try:
                    loop.call_soon_threadsafe(ended.set)
                except RuntimeError:  # the event loop is closed
                    pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._publish, recv)
            try:
                async with send:
                    self._thread = threading.Thread(target=poll, name="rawcap-procs-poll", daemon=True)
                    self._thread.start()
                    await ended.wait()
                    if failure:
                        raise failure[0]
            finally:
                self._stop.set()

    async def _publish(self, recv: anyio.abc.ObjectReceiveStream[ProcRecord]) -> None:
        key = self.node.encode()
        async with recv:
            while True:
                producer = AIOKafkaProducer(**producer_kwargs(self.cfg, enable_idempotence=False, acks=1,
                                                              linger_ms=50))
                try:
                    await producer.start()
                    async for rec in recv:
                        await producer.send(PROCS, rec.encode(), key=key,
                                            timestamp_ms=rec.ts_ns // 1_000_000)
                        self.metrics.procs_events.inc()
                    return
                except (KafkaError, OSError) as exc:
                    log.warning("procs publisher: %s; retrying", exc or type(exc).__name__)
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await producer.stop()
                await anyio.sleep(2)

    def close(self) -> None:
        """Stop the poll thread, join it, then free the BPF program (never under a poll)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("process-context poll thread did not stop within %.0f s; "
                            "its BPF program is left to the kernel", _JOIN_TIMEOUT)
                return
        try:
            self._bpf.cleanup()
        except Exception:  # best effort at exit
            pass

