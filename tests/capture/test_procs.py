"""Process context: a known process in a named cgroup talks over the veth; its flows reach
``rawcap.procs`` with its pid, name, cgroup and the container id parsed from the path."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from capture._metrics import Metrics
from capture._procs import ProcsTracer, cgroup_v2_root
from rawcap.config import Config
from rawcap.stack import Stack
from schemas.procs import ProcRecord, decode_proc
from schemas.topics import PROCS
from tests.netns import VethPair

from .helpers import PY, RAWCAP, TRAFFIC, Proc

pytestmark = pytest.mark.integration


async def _procs(bootstrap: str, node: str) -> list[ProcRecord]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        md = await c._client.fetch_all_metadata()
        tps = [TopicPartition(PROCS, p) for p in md.partitions_for_topic(PROCS) or ()]
        assert tps, "rawcap.procs does not exist"
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: list[ProcRecord] = []
        while [tp for tp in tps if await c.position(tp) < end[tp]]:
            for recs in (await c.getmany(timeout_ms=1000, max_records=5000)).values():
                out.extend(decode_proc(r.value) for r in recs if r.key == node.encode())
        return out
    finally:
        await c.stop()


def test_flows_carry_pid_comm_cgroup_container(stack: Stack, tmp_path: Path) -> None:
    root = cgroup_v2_root()
    assert root, "cgroup v2 is not mounted"
    node = f"procs-{uuid.uuid4().hex[:6]}"
    cid = secrets.token_hex(32)
    parent = Path(root) / f"rawcap-test-{uuid.uuid4().hex[:6]}"
    cg = parent / f"cri-containerd-{cid}.scope"
    cg.mkdir(parents=True)
    cg_ino = os.stat(cg).st_ino
    env = {"RAWCAP_BOOTSTRAP": stack.bootstrap}
    try:
        with VethPair("rcprc") as net:
            srv = Proc([PY, TRAFFIC, "server", "7020"], ns=net.a)
            srv.wait_for("serving", stdout=True)
            cap = Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                        "--node", node, "--buffer-dir", str(tmp_path / "buf"), "--procs"], env=env)
            try:
                cap.wait_for("capture running")
                assert "process context disabled" not in cap.text
                client = subprocess.Popen(
                    ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh",
                     *net.b.cmd([PY, TRAFFIC, "client", net.a.ip, "7020", "--sizes", "100",
                                 "--comm", "rcproctest"])])
                assert client.wait(60) == 0
                pid = client.pid
                time.sleep(2)
                assert cap.stop() == 0, cap.text
            finally:
                srv.stop()
                cap.stop()
    finally:
        for d in (cg, parent):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    recs = [r for r in asyncio.run(_procs(stack.bootstrap, node)) if r.pid == pid]
    assert recs, f"no procs records for pid {pid}"
    tcp = [r for r in recs if r.kind == "tcp"]
    udp = [r for r in recs if r.kind == "udp"]
    assert tcp and udp, recs
    for r in (tcp[0], udp[0]):
        assert r.comm == "rcproctest"
        assert r.cgroup_path == "/" + str(cg.relative_to(root))
        assert r.cgroup_id == cg_ino
        assert r.container_id == cid and r.runtime == "containerd"
        assert r.daddr == net.a.ip and r.dport == 7020
    t = tcp[0]
    assert t.proto == 6 and t.saddr == net.b.ip and t.sport > 0
    assert udp[0].proto == 17


def test_records_leave_an_otherwise_idle_agent_at_once(make_config: Callable[..., Config]) -> None:
    """The poll thread hands records to the event loop. With nothing else to wake that loop
    (no packets, no timer due for minutes) a record must still be published within a second,
    not whenever something unrelated wakes the loop: enrich joins flows to these records
    within its grace period (a CI run once saw a flow go out without its process)."""
    cfg = make_config()
    node = f"procs-idle-{uuid.uuid4().hex[:6]}"
    metrics = Metrics(node)
    tracer = ProcsTracer(cfg, node, metrics)

    def send_then_read() -> list[ProcRecord]:
        """In a worker thread, so that the event loop is idle when the datagram goes out and
        stays idle (this thread touches no loop) until the one read, a second later."""
        time.sleep(0.5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", 9))  # a "udp" record for this process
        time.sleep(1.0)
        return asyncio.run(_procs(cfg.get("kafka.bootstrap"), node))

    async def scenario() -> list[ProcRecord]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tracer.run)
            await anyio.sleep(3)  # the publisher's producer has connected
            recs = await anyio.to_thread.run_sync(send_then_read)
            tg.cancel_scope.cancel()
        return recs

    try:
        recs = anyio.run(scenario)
    finally:
        tracer.close()
    mine = [r for r in recs if r.pid == os.getpid() and r.kind == "udp"]
    assert mine, f"1 s after the datagram, rawcap.procs has no udp record of it ({len(recs)} others)"
    assert mine[0].daddr == "127.0.0.1" and mine[0].dport == 9
    sample = metrics.registry.get_sample_value
    assert (sample("rawcap_capture_procs_events_total", {"node": node}) or 0) >= len(recs)
    assert sample("rawcap_capture_procs_dropped_total", {"node": node}) == 0
