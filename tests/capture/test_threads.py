"""Every thread the capture agent starts has an owner that joins it.

The process-context poll thread can be inside ``ring_buffer_poll`` when the tracer stops; its
BPF program (the ring buffer the poll reads) may only be freed once the thread has ended.
Stopped many times under load, the tracer joins first, and an agent leaves no thread of its
own (ring, procs poll, FIFO fsync, /metrics server) running once ``run()`` returns.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from capture._metrics import Metrics
from capture._procs import ProcsTracer
from capture.agent import Agent
from rawcap.config import Config
from rawcap.stack import Stack
from tests.netns import VethPair

from .helpers import PY, TRAFFIC, Proc

pytestmark = pytest.mark.integration


class _Datagrams:
    """UDP sends from this process in a loop: a steady stream of process-context events."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="test-datagrams", daemon=True)

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not self._stop.is_set():
                s.sendto(b"x", ("127.0.0.1", 9))
                time.sleep(0.0005)

    def __enter__(self) -> _Datagrams:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(10)


@pytest.mark.timeout(900)  # each tracer compiles its BPF program (bcc: seconds to a minute)
def test_tracer_stopped_under_load_joins_its_poll_thread_before_freeing_bpf(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config()
    node = f"thr-{uuid.uuid4().hex[:6]}"
    rng = random.Random(7)
    seen = 0
    with _Datagrams():
        for _ in range(4):
            metrics = Metrics(node)
            tracer = ProcsTracer(cfg, node, metrics)
            freed_while_polling: list[bool] = []
            real_cleanup = tracer._bpf.cleanup
            poll: list[threading.Thread] = []

            def cleanup(real: Callable[[], None] = real_cleanup, poll: list[threading.Thread] = poll,
                        seen: list[bool] = freed_while_polling) -> None:
                seen.append(bool(poll) and poll[0].is_alive())
                real()

            tracer._bpf.cleanup = cleanup

            async def scenario(tracer: ProcsTracer = tracer, poll: list[threading.Thread] = poll) -> None:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(tracer.run)
                    with anyio.fail_after(30):
                        while tracer._thread is None:  # noqa: ASYNC110 (the tracer has no event for it)
                            await anyio.sleep(0.01)
                    poll.append(tracer._thread)
                    await anyio.sleep(rng.uniform(0.05, 0.6))  # stop at any point of a poll
                    tg.cancel_scope.cancel()

            anyio.run(scenario)
            tracer.close()
            assert poll and not poll[0].is_alive()
            assert freed_while_polling == [False], "the BPF program was freed under a running poll"
            sample = metrics.registry.get_sample_value
            seen += int((sample("rawcap_capture_procs_events_total", {"node": node}) or 0)
                        + (sample("rawcap_capture_procs_dropped_total", {"node": node}) or 0))
    assert seen > 0, "no process-context event reached the tracers: no load"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(900)
def test_agent_stopped_under_load_leaves_no_thread_of_its_own(
    stack: Stack, make_config: Callable[..., Config], tmp_path: Path,
) -> None:
    rng = random.Random(11)
    with VethPair("rcthr") as net, _Datagrams():
        srv = Proc([PY, TRAFFIC, "server", "7031"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        client = Proc([PY, TRAFFIC, "client", net.a.ip, "7031", "--rounds", "1000000",
                       "--sizes", "10,1400"], ns=net.b)
        try:
            for i in range(4):
                before = set(threading.enumerate())
                cfg = make_config({
                    "node.name": f"thr-{uuid.uuid4().hex[:6]}",
                    "capture.iface": net.b.iface,
                    "capture.bufferDir": str(tmp_path / f"buf{i}"),
                    "capture.segmentSize": "256Ki",  # segments roll: fsync threads start
                    "metrics.port": _free_port(),
                })
                agent = Agent(cfg, procs=True, netns=net.b.name)
                summary = anyio.run(agent.run, rng.uniform(1.0, 2.5))
                assert summary.packets > 0, "no load reached the agent"
                left = [t for t in threading.enumerate() if t not in before and t.name.startswith("rawcap-")]
                assert not left, f"threads of the agent still running after run(): {left}"
                # Others (anyio's idle workers) end with the event loop, shortly after.
                deadline = time.monotonic() + 5
                while (new := [t for t in threading.enumerate() if t not in before]) and \
                        time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not new, f"threads still running after the agent's event loop closed: {new}"
        finally:
            client.stop()
            srv.stop()
