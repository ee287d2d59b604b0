"""``rawcap.workloads``: the shared IP -> workload lookup forensics and the dissector use."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from enrich import to_record
from rawcap.config import Config
from rawcap.kafka import ensure_topics, producer_kwargs
from rawcap.workloads import CallNames, WorkloadFilter, Workloads, workload_label
from schemas import topics
from schemas.errors import ConfigError
from schemas.k8s import PodRecord, encode_k8s

from .fakekube import endpointslice, pod, service
from .frames import SYN, tcp_frame, udp_frame

S = 1_000_000_000
T0 = 1_800_000_000 * S


def _reused() -> Workloads:
    """10.231.0.5 is shop/web-1 from T0 until T0+100s, then billing/batch-7."""
    wl = Workloads()
    for kind, obj in [("pod", pod("shop", "api-0", "10.231.0.6", "n1")),
                      ("service", service("shop", "api", "10.96.0.6")),
                      ("endpointslice", endpointslice("shop", "api", [("api-0", "10.231.0.6")]))]:
        rec = to_record(kind, obj)
        wl.apply(rec.key, encode_k8s(rec), 0)
    web = PodRecord("shop", "web-1", "u-web", "n1", ("10.231.0.5",), start_ns=T0,
                    owner_kind="StatefulSet", owner_name="web")
    wl.apply(web.key, encode_k8s(web), T0 // 1_000_000)
    wl.apply(b"pod/shop/web-1", None, (T0 + 100 * S) // 1_000_000)
    batch = PodRecord("billing", "batch-7", "u-batch", "n1", ("10.231.0.5",), start_ns=T0 + 101 * S,
                      owner_kind="Job", owner_name="batch")
    wl.apply(batch.key.encode(), encode_k8s(batch), (T0 + 101 * S) // 1_000_000)
    wl.apply(b"pod/x/y", b"\xc1 not msgpack", 0)  # counted, skipped
    return wl


def test_filter_resolves_as_of_packet_time() -> None:
    wl = _reused()
    assert wl.bad == 1
    frame = tcp_frame("10.231.0.5", 40000, "10.231.0.9", 80, SYN)
    shop = WorkloadFilter(wl, namespaces=["shop"])
    billing = WorkloadFilter(wl, namespaces=["billing"])
    assert shop.match(frame, len(frame), T0 + 50 * S) and not billing.match(frame, len(frame), T0 + 50 * S)
    assert billing.match(frame, len(frame), T0 + 150 * S) and not shop.match(frame, len(frame), T0 + 150 * S)
    assert not shop.match(frame, len(frame), T0 - S)  # before anyone held it
    # either end; regexes are alternatives and must hold together with the namespace
    back = tcp_frame("10.231.0.9", 80, "10.231.0.5", 40000)
    assert WorkloadFilter(wl, pods=["^nope", "^web-"]).match(back, len(back), T0 + 50 * S)
    assert not WorkloadFilter(wl, namespaces=["billing"], pods=["^web-"]).match(back, len(back), T0 + 50 * S)
    # a packet to a ClusterIP belongs to the service's namespace; --pod names pods only
    to_svc = udp_frame("10.231.0.9", 5000, "10.96.0.6", 80)
    assert shop.match(to_svc, len(to_svc), T0) and not WorkloadFilter(wl, pods=["api"]).match(to_svc, 0, T0)
    assert not shop.match(b"\x00" * 20, 20, T0)  # not TCP/UDP: cannot be attributed
    assert WorkloadFilter(wl).empty and WorkloadFilter(wl).match(b"", 0, T0)
    with pytest.raises(ConfigError, match="--pod"):
        WorkloadFilter(wl, pods=["("])


def test_comment_and_call_names() -> None:
    wl = _reused()
    frame = tcp_frame("10.231.0.5", 40000, "10.231.0.6", 80, SYN)
    assert wl.comment(frame, T0 + 50 * S) == \
        b"src=pod/shop/web-1 (StatefulSet/web) dst=pod/shop/api-0 svc=api"
    assert wl.comment(frame, T0 + 150 * S) == \
        b"src=pod/billing/batch-7 (Job/batch) dst=pod/shop/api-0 svc=api"
    assert wl.comment(tcp_frame("192.0.2.1", 1, "192.0.2.2", 2), T0) is None
    assert wl.call_names("10.231.0.5", "10.96.0.6", T0 + 150 * S) == \
        CallNames("batch-7", "billing", "service/api", "shop")
    assert wl.call_names("nonsense", "192.0.2.2", T0) == CallNames("", "", "", "")
    assert workload_label(None) == ""


@pytest.mark.integration
async def test_load_reads_rawcap_k8s(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    await ensure_topics(cfg)
    name = f"wl-{uuid.uuid4().hex[:6]}"
    now = time.time_ns()
    old = PodRecord("shop", name, "u-old", "n1", ("10.231.77.1",), start_ns=now - 60 * S)
    new = PodRecord("billing", name + "-b", "u-new", "n1", ("10.231.77.1",), start_ns=now - 20 * S)
    producer = AIOKafkaProducer(**producer_kwargs(cfg))
    await producer.start()
    try:
        await producer.send_and_wait(topics.K8S, encode_k8s(old), key=old.key.encode(),
                                     timestamp_ms=(now - 59 * S) // 1_000_000)
        await producer.send_and_wait(topics.K8S, None, key=old.key.encode(),
                                     timestamp_ms=(now - 30 * S) // 1_000_000)
        await producer.send_and_wait(topics.K8S, encode_k8s(new), key=new.key.encode(),
                                     timestamp_ms=(now - 19 * S) // 1_000_000)
    finally:
        await producer.stop()
    wl = await Workloads.load(cfg)
    assert wl.records >= 3
    assert wl.call_names("10.231.77.1", "", now - 45 * S)[:2] == (name, "shop")
    assert wl.call_names("10.231.77.1", "", now - 25 * S)[:2] == ("", "")  # between owners
    assert wl.call_names("10.231.77.1", "", now)[:2] == (name + "-b", "billing")

    # following: records published later are applied while it runs
    live, ready = Workloads(), anyio.Event()
    later = PodRecord("shop", name + "-c", "u-c", "n1", ("10.231.77.2",), start_ns=now)
    async with anyio.create_task_group() as tg:
        tg.start_soon(live.follow, cfg, ready)
        with anyio.fail_after(30):
            await ready.wait()
            assert live.resolve("10.231.77.1", now) is not None
            producer = AIOKafkaProducer(**producer_kwargs(cfg))
            await producer.start()
            try:
                await producer.send_and_wait(topics.K8S, encode_k8s(later), key=later.key.encode())
            finally:
                await producer.stop()
            while live.resolve("10.231.77.2", now + S) is None:  # noqa: ASYNC110 (polling outside state)
                await anyio.sleep(0.1)
        tg.cancel_scope.cancel()


@pytest.mark.integration
async def test_window_of_packets_filtered_by_workload(make_config: Callable[..., Config]) -> None:
    """What ``rawcap consume --namespace``/``pcap export --pod`` will do once wired: packets
    of a window read by rawcap.window, kept when either end's workload at *the packet's time*
    matches, each with a comment naming both ends."""
    from rawcap.window import WindowReader
    from schemas import Packet, encode_batch

    from .frames import handshake

    cfg = make_config()
    await ensure_topics(cfg)
    node = f"wl-node-{uuid.uuid4().hex[:6]}"
    now = time.time_ns()
    t_old, t_new = now - 40 * S, now - 10 * S
    old = PodRecord("shop", f"web-{node}", "u-o", node, ("10.231.78.1",), start_ns=now - 60 * S)
    new = PodRecord("billing", f"batch-{node}", "u-n", node, ("10.231.78.1",), start_ns=now - 20 * S,
                    owner_kind="Job", owner_name="batch")
    producer = AIOKafkaProducer(**producer_kwargs(cfg))
    await producer.start()
    try:
        for key, value, ts in [(old.key, encode_k8s(old), now - 60 * S), (old.key, None, now - 30 * S),
                               (new.key, encode_k8s(new), now - 20 * S)]:
            await producer.send_and_wait(topics.K8S, value, key=key.encode(), timestamp_ms=ts // 1_000_000)
        for seq, (t0, frames) in enumerate([
            (t_old, handshake("10.231.78.1", 40001, "10.231.78.9", 80)),
            (t_old + S, handshake("10.231.78.5", 40002, "10.231.78.9", 80)),  # nobody's pod
            (t_new, handshake("10.231.78.1", 40003, "10.231.78.9", 80)),
        ]):
            pkts = [Packet(t0 + i * 1000, len(f), len(f), 2, 0, memoryview(f)) for i, f in enumerate(frames)]
            await producer.send_and_wait(topics.PACKETS, encode_batch(
                node=node, seq=seq, packets=pkts, ifaces={2: "eth0"}), key=node.encode(),
                timestamp_ms=t0 // 1_000_000)
    finally:
        await producer.stop()

    wl = await Workloads.load(cfg)
    shop = WorkloadFilter(wl, namespaces=["shop"])
    batch = WorkloadFilter(wl, pods=["^batch-"])
    kept: dict[str, list[int]] = {"shop": [], "batch": []}
    comments = []
    async with WindowReader(cfg, now - 50 * S, now, nodes=[node]) as reader:
        async for chunk in reader.packets():
            for p in chunk:
                sport = int.from_bytes(p.data[34:36], "big")
                client_port = sport if sport != 80 else int.from_bytes(p.data[36:38], "big")
                if shop.match(p.data, p.origlen, p.ts_ns):
                    kept["shop"].append(client_port)
                if batch.match(p.data, p.origlen, p.ts_ns):
                    kept["batch"].append(client_port)
                comments.append(wl.comment(p.data, p.ts_ns))
    assert kept == {"shop": [40001] * 7, "batch": [40003] * 7}
    assert comments.count(f"src=pod/shop/web-{node} dst=-".encode()) == 4  # client -> server
    assert comments.count(f"src=- dst=pod/billing/batch-{node} (Job/batch)".encode()) == 3
    assert comments.count(None) == 7
