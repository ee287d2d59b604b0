"""Every rawcap command against the secured 3-broker cluster, each as its own service user
from its ``<dataDir>/clients/<service>.yaml`` values file (the ACLs are all they get).

One real run end to end: HTTP traffic over a veth pair, ``capture`` ships it (and process
context) as the capture user; ``consume``, ``pcap export``, ``snapshot create/export`` and
``flows`` read as the forensics user; ``archive`` archives as the archive user and the window
is exported back from the archive; ``dissect`` (range and ``--follow``) and ``calls`` as the
dissect user; ``enrich`` as the enrich user; ``k8s-watch`` as the k8s-watch user against the
test API server. The fast export path does not serve TLS/SASL: it hands the whole read to
aiokafka's consumer before reading a byte, and the export equals what ``consume`` reads.
No password appears in any command's output or logs (the capture agent's at debug level) or in
its ``/metrics`` (``test_cluster.py`` covers command lines, broker logs and ``config show``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from rawcap.config import load_config
from rawcap.kafka import read_topic_to_end
from rawcap.stack import Stack
from rawcap.window import start_kafka_lookup
from schemas.topics import K8S
from tests.capture.helpers import PY, RAWCAP, Proc, pcap_packets
from tests.enrich.fakekube import FakeKube, namespace, node, pod
from tests.netns import VethPair
from tests.stack.test_cluster import secrets_of

pytestmark = pytest.mark.integration

PORT, REQUESTS = 8089, 5
_CLIENT = (
    "import sys, time, urllib.request\n"
    "for i in range(int(sys.argv[2])):\n"
    f"    urllib.request.urlopen(f'http://{{sys.argv[1]}}:{PORT}/?i={{i}}', timeout=10).read()\n"
    "    time.sleep(0.05)\n"
)


def run(cluster: Stack, service: str, *args: str, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    import os

    proc = subprocess.run([RAWCAP, "--config", str(cluster.service_config(service)), *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"rawcap {' '.join(args)} as {service}: {proc.stderr}"
    _no_secret(cluster, f"rawcap {args[0]}'s output", proc.stdout + proc.stderr)
    return proc


def _no_secret(cluster: Stack, where: str, text: str) -> None:
    leaked = [s for s in secrets_of(cluster) if s in text]
    assert not leaked, f"a password is in {where}"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_lines(pred: Callable[[], Any], what: str, wait_s: float = 120) -> Any:
    with anyio.fail_after(wait_s, reason=f"timed out waiting for {what}"):
        while not (got := await anyio.to_thread.run_sync(pred)):  # noqa: ASYNC110 (polling outside state)
            await anyio.sleep(1)
    return got


@pytest.mark.timeout(900)
async def test_every_command_as_its_own_user(cluster: Stack, tmp_path: Path) -> None:
    name = f"sec-{uuid.uuid4().hex[:6]}"
    env = {"RAWCAP_SNAPSHOTS_URL": f"file://{tmp_path}/snapshots",
           "RAWCAP_ARCHIVE_URL": f"file://{tmp_path}/archive"}
    (tmp_path / "archive").mkdir()

    # -- capture: real HTTP traffic over a veth pair, shipped as the capture user
    metrics_port = _free_port()
    with VethPair("rcsec") as net:
        srv = Proc([PY, "-m", "http.server", str(PORT), "--bind", "0.0.0.0"], ns=net.a)
        cap = Proc([RAWCAP, "--config", str(cluster.service_config("capture")), "capture",
                    "--netns", net.b.name, "--iface", net.b.iface, "--node", name,
                    "--buffer-dir", str(tmp_path / "buf"), "--procs"],
                   env={"RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.3s", "RAWCAP_LOG_LEVEL": "debug",
                        "RAWCAP_METRICS_PORT": str(metrics_port)})
        try:
            await anyio.to_thread.run_sync(lambda: cap.wait_for("shipper connected", 120))
            await anyio.sleep(1)
            metrics = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{metrics_port}/metrics")
            assert "rawcap_capture_" in metrics
            _no_secret(cluster, "the capture agent's /metrics", metrics)
            t0 = time.time_ns()
            client = await anyio.run_process(net.b.cmd([PY, "-c", _CLIENT, net.a.ip, str(REQUESTS)]),
                                             check=False)
            assert client.returncode == 0, client.stderr.decode()
            await anyio.sleep(1.5)
            t1 = time.time_ns()
        finally:
            assert cap.stop() == 0, cap.text
            srv.stop()
    assert any(line.startswith("debug ") for line in cap.lines), cap.text
    _no_secret(cluster, "the capture agent's debug log", cap.text)
    summary = cap.summary()
    assert summary["unshipped"] == "0" and int(summary["packets"]) > 0, summary
    window = ["--from", str(t0 // 10**9 - 1), "--to", str(t1 // 10**9 + 1), "--node", name]

    # -- consume and pcap export as the forensics user; the fast path hands over at once
    lines = run(cluster, "forensics", "consume", *window, "--json").stdout.splitlines()
    consumed = [json.loads(line) for line in lines]
    assert len(consumed) == int(summary["packets"]), (len(consumed), summary)
    assert sum(1 for p in consumed if PORT in (p.get("sport"), p.get("dport"))) >= REQUESTS * 6
    secured = load_config(str(cluster.service_config("forensics")), env={})
    assert start_kafka_lookup(secured, t0, [name]) is None  # TLS/SASL: aiokafka reads it all
    run(cluster, "forensics", "pcap", "export", *window, "-o", str(tmp_path / "k.pcapng"))
    exported = pcap_packets(tmp_path / "k.pcapng")
    assert len(exported) == len(consumed), "the export lost or repeated packets"
    assert len(set(exported)) >= len(exported) - REQUESTS  # not one packet written twice over

    # -- snapshot (object store) as the forensics user
    run(cluster, "forensics", "snapshot", "create", *window[:4], "--name", name, env=env)
    run(cluster, "forensics", "snapshot", "export", name, "-o", str(tmp_path / "s.pcapng"), env=env)
    assert pcap_packets(tmp_path / "s.pcapng") == exported

    # -- archive as the archive user, then the window back from the archive
    arc = Proc([RAWCAP, "--config", str(cluster.service_config("archive")), "archive",
                "--flush-interval", "1s"], env=env)
    await _wait_lines(lambda: any(f"node={name}" in str(p) for p in (tmp_path / "archive").rglob("*.json")),
                      "the archive's index objects of this node")
    assert arc.stop() == 0, arc.text
    _no_secret(cluster, "the archiver's log", arc.text)
    run(cluster, "forensics", "pcap", "export", "--source", "archive", *window, "-o",
        str(tmp_path / "a.pcapng"), env=env)
    assert pcap_packets(tmp_path / "a.pcapng") == exported

    # -- dissect a range and follow live, as the dissect user; calls from the local store
    db = tmp_path / "calls.db"
    out = run(cluster, "dissect", "dissect", *window, "--json", "--db", str(db)).stdout
    calls = [json.loads(line) for line in out.splitlines()]
    assert len([c for c in calls if c.get("proto") == "http1"]) == REQUESTS, calls
    listed = run(cluster, "dissect", "calls", "--db", str(db), "--node", name, "--json").stdout
    assert len(listed.splitlines()) == REQUESTS
    live_db = tmp_path / "live.db"
    follow = Proc([RAWCAP, "--config", str(cluster.service_config("dissect")), "dissect",
                   "--follow", "--quiet", "--db", str(live_db)],
                  env={"RAWCAP_TAP_CAPTURE_STOP_AFTER": "0"})

    def live_calls() -> int:
        if not live_db.exists():
            return 0
        got = subprocess.run([RAWCAP, "calls", "--db", str(live_db), "--node", name, "--json"],
                             capture_output=True, text=True, timeout=60, check=False)
        return len(got.stdout.splitlines()) if got.returncode == 0 else 0

    await _wait_lines(lambda: live_calls() >= REQUESTS, "dissect --follow to store the calls")
    assert follow.stop() == 0, follow.text
    _no_secret(cluster, "dissect --follow's log", follow.text)

    # -- enrich as the enrich user; flows read back as the forensics user
    enrich = Proc([RAWCAP, "--config", str(cluster.service_config("enrich")), "enrich"],
                  env={"RAWCAP_ENRICH_FLOW_INTERVAL": "1s", "RAWCAP_ENRICH_GRACE": "500ms"})

    def flows() -> list[str]:
        got = run(cluster, "forensics", "flows", "--node", name, "--port", str(PORT), "--json")
        return got.stdout.splitlines()

    got_flows = await _wait_lines(flows, "rawcap.flows records of this node")
    assert enrich.stop() == 0, enrich.text
    _no_secret(cluster, "enrich's log", enrich.text)
    assert all(json.loads(f)["node"] == name for f in got_flows)

    # -- k8s-watch as the k8s-watch user, against the test API server
    fk = FakeKube()
    await fk.start()
    try:
        kc = tmp_path / "kubeconfig"
        kc.write_text(fk.kubeconfig())
        fk.put("namespace", namespace("shop"))
        fk.put("node", node(name, "192.0.2.10"))
        fk.put("pod", pod("shop", f"{name}-0", "10.99.0.7", name))
        watch = await anyio.open_process(
            [RAWCAP, "--config", str(cluster.service_config("k8s-watch")), "k8s-watch",
             "--kubeconfig", str(kc), "--no-filters"], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        keys: set[str] = set()
        try:
            with anyio.fail_after(120):
                while f"pod/shop/{name}-0" not in keys:
                    await anyio.sleep(1)
                    await read_topic_to_end(cluster.config(), K8S,
                                            lambda r: keys.add(r.key.decode()) if r.key else None)
        finally:
            watch.terminate()
            with anyio.move_on_after(30):
                await watch.wait()
            if watch.returncode is None:
                watch.kill()
                await watch.wait()
        assert watch.returncode == 0
    finally:
        await fk.stop()
    assert f"node/{name}" in keys
