"""The commands as users run them: errors, SIGTERM with a final flush, DLQ."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from rawcap.config import Config
from rawcap.kafka import ensure_topics, producer_kwargs, read_topic_to_end
from rawcap.stack import KubeCluster
from schemas import Packet, encode_batch, topics
from schemas.flows import decode_flow
from tests.capture.helpers import RAWCAP, Proc

from .control import clear_capture_filters
from .frames import handshake


def test_bad_kubeconfig_is_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([RAWCAP, "k8s-watch", "--kubeconfig", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RAWCAP_BOOTSTRAP": "127.0.0.1:1"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"rawcap: error: k8s.kubeconfig: {tmp_path / 'missing'} does not exist"]


def test_flows_bad_filter_is_one_line_error() -> None:
    r = subprocess.run([RAWCAP, "flows", "--pod", "(", "--bootstrap", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--pod" in r.stderr
    r = subprocess.run([RAWCAP, "flows", "--port", "70000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "70000" in r.stderr
    r = subprocess.run([RAWCAP, "flows", "--bootstrap", "127.0.0.1:1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "rawcap: error: cannot reach Kafka at 127.0.0.1:1" in r.stderr


@pytest.mark.integration
async def test_enrich_sigterm_flushes_and_dlq(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    await ensure_topics(cfg)
    node = f"enr-term-{uuid.uuid4().hex[:6]}"
    env = {"RAWCAP_BOOTSTRAP": cfg.get("kafka.bootstrap"), "RAWCAP_ENRICH_FLOW_INTERVAL": "1h"}
    proc = Proc([RAWCAP, "--log-level", "debug", "enrich"], env=env)
    try:
        await anyio.to_thread.run_sync(lambda: proc.wait_for("context loaded", 90))
        t0 = time.time_ns()
        pkts = [Packet(t0 + i, len(f), len(f), 2, 0, memoryview(f))
                for i, f in enumerate(handshake("10.231.9.1", 41000, "10.231.9.2", 443))]
        producer = AIOKafkaProducer(**producer_kwargs(cfg))
        await producer.start()
        try:
            await producer.send_and_wait(topics.PACKETS, b"RCAP\xff corrupt", key=node.encode())
            value = encode_batch(node=node, seq=1, packets=pkts, ifaces={2: "eth0"})
            await producer.send_and_wait(topics.PACKETS, value, key=node.encode())
        finally:
            await producer.stop()
        await anyio.to_thread.run_sync(lambda: proc.wait_for(f"node={node}", 90))
        assert not any("flows published" in line and node in line for line in proc.lines)
    finally:
        rc = await anyio.to_thread.run_sync(lambda: proc.stop(signal.SIGTERM, 60))
    assert rc == 0, proc.text
    assert "enrich stopped" in proc.text
    found: list[Any] = []
    dlq: list[Any] = []
    await read_topic_to_end(cfg, topics.FLOWS, lambda r: found.append(decode_flow(r.value)))
    await read_topic_to_end(cfg, topics.DLQ, lambda r: dlq.append(r))
    mine = [f for f in found if f.node == node]
    assert len(mine) == 1 and (mine[0].packets_fwd, mine[0].packets_rev) == (4, 3)
    assert any(r.key == node.encode() and dict(r.headers).get("reporter") == b"enrich" for r in dlq)


@pytest.mark.integration
@pytest.mark.timeout(600)  # a real control plane + Kafka on 2 shared cores
async def test_k8s_watch_command_publishes_and_stops_on_sigterm(
    make_config: Callable[..., Config], kube: KubeCluster, tmp_path: Path
) -> None:
    """`rawcap k8s-watch` against the real API server: a pod's record, then its tombstone
    once the pod is deleted, and the node's capture filter from the values file."""
    from schemas.k8s import PodRecord, decode_k8s

    from .realkube import Kube

    cfg = make_config()
    await ensure_topics(cfg)
    k = Kube(kube)
    sfx = uuid.uuid4().hex[:6]
    ns, node = f"cli-{sfx}", f"cli-node-{sfx}"
    k.namespace(ns)
    k.node(node, "192.0.2.99")
    k.deployment(ns, "agent")
    name = k.wait_pod(ns, "agent")
    k.run_pod(ns, name, node, "10.231.99.1")
    values = tmp_path / "values.yaml"
    values.write_text(f"tap:\n  excludedNamespaces: [{ns}]\n")
    env = {"RAWCAP_BOOTSTRAP": cfg.get("kafka.bootstrap")}
    proc = Proc([RAWCAP, "--config", str(values), "k8s-watch", "--kubeconfig", str(kube.kubeconfig)], env=env)
    try:
        await anyio.to_thread.run_sync(lambda: proc.wait_for(f"filter/{node}", 90))
        await anyio.to_thread.run_sync(lambda: k.scale(ns, "deployment", "agent", 0))
        await anyio.to_thread.run_sync(lambda: k.delete_pod(ns, name))
        await anyio.sleep(2)
    finally:
        rc = await anyio.to_thread.run_sync(lambda: proc.stop(signal.SIGTERM, 60))
        k.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        k.kubectl("delete", "node", node, "--wait=false", check=False)
    assert rc == 0, proc.text
    history: list[Any] = []
    await read_topic_to_end(cfg, topics.K8S, lambda r: history.append(r))
    mine = [r for r in history if r.key == f"pod/{ns}/{name}".encode()]
    assert [r.value is None for r in mine][-2:] == [False, True]  # the record, then its tombstone
    rec = decode_k8s([r for r in mine if r.value is not None][-1].value)
    assert isinstance(rec, PodRecord) and (rec.owner_kind, rec.owner_name) == ("Deployment", "agent")
    assert rec.ips == ("10.231.99.1",)
    await clear_capture_filters(cfg, node)
