"""Pods that really run (issue #16 part 4): ``helm install`` of charts/rawcap onto a real node.

``rawcap stack up --k8s`` (Kafka, MinIO, etcd, kube-apiserver, kube-controller-manager) plus
a worker node (tests/k8s/node.py: containerd 2 + runc + CNI bridge + kubelet +
kube-scheduler) with this checkout's image imported. ``helm install rc charts/rawcap -f
values.yaml`` starts the capture agent DaemonSet and the archive, archive tables, dissect
--follow, enrich and k8s-watch Deployments as pods; a server pod and a client pod from the same image talk
HTTP over the pod network, and:

- every pod of the release turns Ready (the agent through its ``/ready`` probe);
- ``rawcap flows`` names the client and server pods (k8s-watch in a pod, enrich in a pod);
- ``rawcap calls`` in the dissect pod (``kubectl exec``) has the HTTP calls;
- the archive pod wrote objects to MinIO, and an export from the archive has what Kafka has;
- the archive tables pod wrote the client's calls as Parquet, named after the pods;
- ``helm uninstall``: the agent flushes its open batch on SIGTERM, and everything it captured,
  exported from Kafka with ``rawcap pcap export``, equals tcpdump on the node, byte for byte.

What the test cluster lacks and the values stand in for (docs/kubernetes.md, "What was run
for real"): no kube-proxy and no cluster DNS, so k8s-watch gets the API server's address
(``k8sWatch.apiServer``, the chart's knob for clusters without a kube-proxy) and the consumers
use the node's network (``consumers.hostNetwork``) to reach the stack's loopback Kafka/MinIO.

The tests run in file order and share one install (the ``run`` fixture); the last one
uninstalls.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import yaml

from rawcap.packet import parse_l4
from rawcap.stack import Stack, find_kube
from rawcap.stack._proc import free_port
from rawcap.timeparse import format_ns
from schemas import decode_batch
from tests.capture.helpers import kafka_records
from tests.charts.helpers import CHART, helm, kubectl
from tests.forensics.helpers import rawcap, records

from .node import Node

pytestmark = pytest.mark.integration

NS, APPS, RELEASE, FULL = "rawcap", "e2e", "rc", "rc-rawcap"
#: The agent's batches close on this timer (or at shutdown): long enough that the last
#: traffic before ``helm uninstall`` can only reach Kafka through the SIGTERM flush.
BATCH_DELAY = 30.0
REQUESTS = 20
NONROOT = {"runAsNonRoot": True, "runAsUser": 10001, "readOnlyRootFilesystem": True,
           "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
T = TypeVar("T")


def _pod(name: str, command: list[str], image: str, restart: str = "Always") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": APPS, "labels": {"app": name}},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 2, "containers": [{
                "name": name, "image": image, "imagePullPolicy": "Never", "command": command,
                "securityContext": NONROOT}]}}


def _client(name: str, server_ip: str, image: str, n: int) -> dict[str, Any]:
    code = ("import urllib.request as u\n"
            f"print([u.urlopen('http://{server_ip}:8080/?c={name}&i=%d' % i).status for i in range({n})])")
    return _pod(name, ["python3", "-c", code], image, restart="Never")


def _iso(ns: int) -> str:
    return format_ns(ns)[:26] + "Z"  # microseconds, rounded down


def _wait(what: str, probe: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


@dataclass
class Run:
    """What the one install did, for the tests below."""

    stack: Stack
    node: Node
    image: str
    root: Path
    t0: int = 0                               # ns, before any pod traffic
    t_phase1: int = 0                         # ns, after the first client finished
    install_s: float = 0.0                    # helm install --wait
    ready_wait_s: float = 0.0                 # helm install .. every pod Ready
    ready_s: dict[str, float] = field(default_factory=dict)  # pod -> created..Ready
    web_ip: str = ""
    tcpdump: subprocess.Popen[bytes] | None = None

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return kubectl(self.stack.k8s.kubeconfig, *args, check=check, input=input, timeout=300).stdout

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))

    def pod_json(self, ns: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "pod", "-n", ns, name, "-o", "json")))

    def phase(self, ns: str, name: str, phases: set[str], timeout: float = 300) -> str:
        def probe() -> str | None:
            phase = self.kubectl("get", "pod", "-n", ns, name, "-o", "jsonpath={.status.phase}",
                                 check=False).strip()
            return phase if phase in phases else None
        try:
            return _wait(f"pod {ns}/{name} in {phases}", probe, timeout, every=0.5)
        except AssertionError as exc:
            described = self.kubectl("describe", "pod", "-n", ns, name, check=False)
            raise AssertionError(f"{exc}\n{described}") from None

    @property
    def archive_url(self) -> str:
        return f"s3://{self.stack.bucket}/pods"

    def env(self) -> dict[str, str]:
        """What the host's rawcap needs to read this stack's Kafka and the archive."""
        return {"RAWCAP_BOOTSTRAP": self.stack.bootstrap, "RAWCAP_ARCHIVE_URL": self.archive_url,
                **self.stack.s3_env()}

    def export(self, out: Path, lo: int, hi: int, *extra: str) -> list[Any]:
        p = rawcap("pcap", "export", "--node", self.node.name, "--from", _iso(lo), "--to", _iso(hi),
                   *extra, "-o", str(out), env=self.env(), timeout=180)
        assert p.returncode == 0, p.stderr.decode()
        return records(out)


def _values(run: Run, path: Path) -> Path:
    """The values file: a user's, plus what this cluster lacks (module docstring)."""
    k8s = run.stack.k8s
    values = {
        "image": {"repository": "rawcap", "tag": run.image, "pullPolicy": "Never"},
        "kafka": {"bootstrap": run.stack.bootstrap},
        "tap": {"capture": {"raw": {"storageSize": "256Mi"}}},
        "archive": {"enabled": True, "url": run.archive_url, "flushInterval": "2s",
                    "credentialsSecret": "archive-s3"},
        "agent": {"iface": run.node.bridge, "bufferDir": str(run.root / "agent-buffer"),
                  "metricsPort": free_port(),
                  "extraEnv": [{"name": "RAWCAP_CAPTURE_BATCH_MAX_DELAY", "value": f"{BATCH_DELAY:g}s"}]},
        "archiver": {"metricsPort": free_port()},
        "archiveTables": {"flushInterval": "2s"},
        "enrich": {"flowInterval": "2s"},
        "k8sWatch": {"apiServer": f"127.0.0.1:{k8s.api_port}"},
        "consumers": {"hostNetwork": True},
    }
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def run(pods_stack: Stack, node: Node, image_tag: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    r = Run(pods_stack, node, image_tag, tmp_path_factory.mktemp("pods"))
    r.kubectl("create", "namespace", NS)
    r.kubectl("create", "namespace", APPS)
    r.kubectl("create", "secret", "generic", "-n", NS, "archive-s3",
              *(f"--from-literal={k}={v}" for k, v in pods_stack.s3_env().items()))
    values = _values(r, r.root / "values.yaml")
    t = time.monotonic()
    helm("install", RELEASE, str(CHART), "-n", NS, "-f", str(values), "--wait", "--timeout", "10m",
         kubeconfig=pods_stack.k8s.kubeconfig, timeout=660)
    r.install_s = time.monotonic() - t
    # helm's --wait counts a DaemonSet with maxUnavailable: 1 as ready with no pod Ready
    r.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "--all", "--timeout=300s")
    r.ready_wait_s = time.monotonic() - t
    for pod in json.loads(r.kubectl("get", "pods", "-n", NS, "-o", "json"))["items"]:
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", pod["status"]
        created = pod["metadata"]["creationTimestamp"]
        r.ready_s[pod["metadata"]["name"]] = _seconds(ready["lastTransitionTime"]) - _seconds(created)
    try:
        r.t0 = time.time_ns()
        errors = open(r.root / "tcpdump.err", "wb")  # open while tcpdump runs
        r.tcpdump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(r.root / "node.pcap"), "-U",
                                      "-s", "0", "--time-stamp-precision", "nano", "-B", "16384"],
                                     stdout=subprocess.DEVNULL, stderr=errors)
        _wait("tcpdump listening", lambda: b"listening on" in (r.root / "tcpdump.err").read_bytes(), 30, 0.2)
        image = f"rawcap:{image_tag}"
        r.apply(_pod("web", ["python3", "-m", "http.server", "8080"], image),
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": APPS},
                 "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}})
        r.phase(APPS, "web", {"Running"})
        r.web_ip = r.pod_json(APPS, "web")["status"]["podIP"]
        time.sleep(1)  # http.server listening
        r.apply(_client("client", r.web_ip, image, REQUESTS))
        r.phase(APPS, "client", {"Succeeded", "Failed"})
        r.t_phase1 = time.time_ns()
        yield r
    finally:
        if r.tcpdump is not None and r.tcpdump.poll() is None:
            r.tcpdump.send_signal(signal.SIGINT)
            r.tcpdump.wait(10)
        r.kubectl("delete", "namespace", APPS, "--wait=false", check=False)
        helm("uninstall", RELEASE, "-n", NS, "--wait", kubeconfig=pods_stack.k8s.kubeconfig, check=False)


def _seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.mark.timeout(900)
def test_helm_install_runs_the_agent_and_the_consumers_as_ready_pods(run: Run) -> None:
    pods = json.loads(run.kubectl("get", "pods", "-n", NS, "-o", "json"))["items"]
    by_component = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in pods}
    assert sorted(by_component) == ["agent", "archive", "archive-tables", "dissect", "enrich", "k8s-watch"]
    for comp, pod in by_component.items():
        st = pod["status"]
        assert st["phase"] == "Running" and all(c["ready"] for c in st["containerStatuses"]), (comp, st)
        assert all(c["restartCount"] == 0 for c in st["containerStatuses"]), (comp, st)
        assert pod["spec"]["nodeName"] == run.node.name
    agent = by_component["agent"]
    assert agent["spec"]["hostNetwork"] is True and agent["status"]["podIP"] == run.node.node_ip
    # the agent's own word that it captures (its /ready, through the kubelet's probe)
    logs = run.kubectl("logs", "-n", NS, agent["metadata"]["name"])
    assert run.node.bridge in logs, logs[-2000:]
    pid = run.node.container_pid(agent["status"]["containerStatuses"][0]["containerID"])
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    print(f"\nhelm install --wait: {run.install_s:.1f} s, every pod Ready {run.ready_wait_s:.1f} s; "
          "created..Ready: "
          + ", ".join(f"{n}: {s:.0f} s" for n, s in sorted(run.ready_s.items()))
          + f"\nagent pid {pid} VmRSS {status['VmRSS'].strip()} VmHWM {status['VmHWM'].strip()}; "
          f"node Ready {run.node.timings['Ready']:.1f} s; " + "; ".join(
              f"{k} {v:.1f} s" for k, v in run.node.timings.items() if k != "Ready"))
    assert b"capture" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"), pid


@pytest.mark.timeout(300)
def test_client_pod_talks_to_server_pod(run: Run) -> None:
    assert run.phase(APPS, "client", {"Succeeded", "Failed"}) == "Succeeded"
    out = run.kubectl("logs", "-n", APPS, "client")  # through the apiserver: kubelet by InternalIP
    assert out.strip() == str([200] * REQUESTS), out


@pytest.mark.timeout(300)
def test_flows_name_the_client_and_server_pods(run: Run) -> None:
    client_ip = run.pod_json(APPS, "client")["status"]["podIP"]

    def flows() -> list[dict[str, Any]] | None:
        p = rawcap("flows", "--from", _iso(run.t0), "--namespace", APPS, "--json", env=run.env())
        assert p.returncode == 0, p.stderr.decode()
        got = [json.loads(line) for line in p.stdout.decode().splitlines()]
        http = [f for f in got if f["proto"] == "tcp" and f["dport"] == 8080]
        return http if len(http) >= REQUESTS else None

    http = _wait("flows of the client's requests", flows, BATCH_DELAY + 120)
    text = "\n".join(json.dumps(f) for f in http)
    for f in http:
        assert (f["src"], f["dst"]) == (client_ip, run.web_ip), text
        src, dst = f["src_workload"] or {}, f["dst_workload"] or {}
        assert (src.get("kind"), src.get("namespace"), src.get("name")) == ("pod", APPS, "client"), text
        assert src["node"] == run.node.name, text
        assert (dst.get("kind"), dst.get("namespace"), dst.get("name"), dst.get("service")) == (
            "pod", APPS, "web", "web"), text
        assert f["packets_fwd"] > 0 and f["packets_rev"] > 0, text


@pytest.mark.timeout(300)
def test_calls_in_the_dissect_pod_are_the_http_requests(run: Run) -> None:
    def calls() -> list[dict[str, Any]] | None:
        p = kubectl(run.stack.k8s.kubeconfig, "exec", "-n", NS, f"deploy/{FULL}-dissect", "--",
                    "rawcap", "calls", "--json", "--namespace", APPS, check=False, timeout=120)
        if p.returncode != 0:  # no store until the first call was written
            assert "no local calls store" in p.stderr, p.stderr
            return None
        got = [json.loads(line) for line in p.stdout.splitlines()]
        return got if len(got) >= REQUESTS else None

    got = _wait("calls in the dissect pod", calls, BATCH_DELAY + 120)
    text = "\n".join(json.dumps(c) for c in got)
    assert sorted(c["path"] for c in got) == sorted(f"/?c=client&i={i}" for i in range(REQUESTS)), text
    for c in got:  # each named after the pods at both ends (dissect reads rawcap.k8s too)
        assert (c["proto"], c["method"], c["status"], c["complete"]) == ("http1", "GET", 200, True), text
        assert (c["src_namespace"], c["src_workload"], c["dst_workload"], c["dst_port"]) == (
            APPS, "client", "web", 8080), text


@pytest.mark.timeout(300)
def test_archive_pod_wrote_what_kafka_holds(run: Run) -> None:
    from obstore.store import S3Store

    store = S3Store(run.stack.bucket, **run.stack.s3_store_kwargs())
    objects = _wait("archive objects", lambda: [o["path"] for batch in store.list(prefix="pods")
                                               for o in batch], BATCH_DELAY + 120)
    assert any(run.node.name in p for p in objects), objects
    from_kafka = run.export(run.root / "phase1-kafka.pcapng", run.t0, run.t_phase1)
    assert len(from_kafka) > REQUESTS * 5  # SYN, request, response, FIN... per request

    def archived() -> list[Any] | None:
        got = run.export(run.root / "phase1-archive.pcapng", run.t0, run.t_phase1, "--source", "archive")
        return got if len(got) >= len(from_kafka) else None

    got = _wait("the window in the archive", archived, 120)
    assert [bytes(r.data) for r in got] == [bytes(r.data) for r in from_kafka]


@pytest.mark.timeout(300)
def test_tables_pod_wrote_the_calls_as_parquet(run: Run) -> None:
    """``archive tables`` ran as a pod: the calls the dissect pod published are Parquet in the
    bucket (what ``rawcap trends`` reads), each named after the pods at both ends."""
    import io

    import obstore
    import polars as pl
    from obstore.store import S3Store

    store = S3Store(run.stack.bucket, **run.stack.s3_store_kwargs())

    def rows() -> list[dict[str, Any]] | None:
        keys = [o["path"] for batch in obstore.list(store, prefix="pods/kind=calls/") for o in batch]
        if not keys:
            return None
        df = pl.concat([pl.read_parquet(io.BytesIO(bytes(obstore.get(store, k).bytes()))) for k in keys])
        got = df.filter(pl.col("src_pod") == "client").to_dicts()
        return got if len(got) >= REQUESTS else None

    got = _wait("the client's calls as Parquet", rows, BATCH_DELAY + 180)
    assert sorted(c["path"] for c in got) == sorted(f"/?c=client&i={i}" for i in range(REQUESTS))
    assert {(c["dst_pod"], c["src_namespace"]) for c in got} == {("web", APPS)}


@pytest.mark.timeout(600)
def test_uninstall_flushes_the_agent_and_its_capture_equals_tcpdump(run: Run) -> None:
    agent = json.loads(run.kubectl("get", "pods", "-n", NS, "-l", "app.kubernetes.io/component=agent",
                                   "-o", "json"))["items"][0]
    follow = subprocess.Popen([*kubectl_argv(run), "logs", "-f", "-n", NS, agent["metadata"]["name"]],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # the last traffic: it sits in the agent's open batch until SIGTERM flushes it
    t_last = time.time_ns()
    run.apply(_client("last", run.web_ip, f"rawcap:{run.image}", 3))
    assert run.phase(APPS, "last", {"Succeeded", "Failed"}) == "Succeeded"
    helm("uninstall", RELEASE, "-n", NS, "--wait", kubeconfig=run.stack.k8s.kubeconfig, timeout=300)
    pid_gone = _wait("agent pod gone", lambda: not run.kubectl(
        "get", "pods", "-n", NS, "-l", "app.kubernetes.io/component=agent", "-o", "name").strip(), 120, 0.5)
    t_gone = time.time_ns()
    assert pid_gone
    out, _ = follow.communicate(timeout=60)
    assert run.tcpdump is not None
    time.sleep(1)
    run.tcpdump.send_signal(signal.SIGINT)
    run.tcpdump.wait(10)
    t1 = time.time_ns()

    want = [r for r in records(run.root / "node.pcap") if parse_l4(r.data) is not None]
    got = run.export(run.root / "all.pcapng", run.t0, t1)
    assert len(want) > REQUESTS * 5
    # compared as multisets: two sockets on one interface may see two crossing packets in
    # opposite orders (tests/forensics/test_capture_vs_tcpdump.py)
    assert sorted((r.caplen, r.origlen, bytes(r.data)) for r in got) == sorted(
        (r.caplen, r.origlen, bytes(r.data)) for r in want), f"{len(got)} exported, {len(want)} by tcpdump"

    # The final batch holds the last client's packets and was opened less than BATCH_DELAY
    # before the agent was gone: only the SIGTERM flush can have closed it.
    final = decode_batch(anyio.run(kafka_records, run.stack.bootstrap, run.node.name)[-1][1])
    assert final.header.first_ns >= t_last and final.packets[-1].data == want[-1].data
    assert t_gone - final.header.first_ns < BATCH_DELAY * 1e9, "the timer, not SIGTERM, may have closed it"
    assert b"signal received, flushing" in out, out[-3000:]
    print(f"\n{len(got)} packets exported from Kafka = {len(want)} by tcpdump on {run.node.bridge}; "
          f"final batch: {final.header.count} packets, agent gone "
          f"{(t_gone - final.header.first_ns) / 1e9:.1f} s after its first")


def kubectl_argv(run: Run) -> list[str]:
    return [str(find_kube("kubectl")), "--kubeconfig", str(run.stack.k8s.kubeconfig)]
