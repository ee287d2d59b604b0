"""``rawcap k8s-watch`` against the real kube-apiserver with ServiceAccount tokens: the chart's
ClusterRole is enough and grants nothing more, a token without it stops the watcher with one
error line, and two ``--leader-elect`` watchers share one Lease (one leads; SIGKILL it and the
other takes over within the lease duration; SIGTERM releases the Lease at once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from rawcap.config import Config
from rawcap.stack import KubeCluster

from .realkube import Kube

pytestmark = pytest.mark.integration
RAWCAP = str(Path(sys.executable).with_name("rawcap"))
LEASE_S = 6


@pytest.fixture
def ns(kube: KubeCluster) -> str:
    name = f"rbac-{uuid.uuid4().hex[:6]}"
    k = Kube(kube)
    k.namespace(name)
    k.install_rbac(name, "rc", "k8sWatch.replicas=2")
    return name


def test_chart_role_grants_exactly_list_watch(kube: KubeCluster, ns: str) -> None:
    k = Kube(kube)
    who = f"system:serviceaccount:{ns}:rc-rawcap-k8s-watch"

    def can(*what: str) -> bool:
        out = k.kubectl("auth", "can-i", *what, "--as", who, check=False).stdout.strip()
        return out == "yes"

    for verb in ("list", "watch", "get"):
        for res in ("pods", "services", "namespaces", "nodes", "endpointslices.discovery.k8s.io"):
            assert can(verb, res, "--all-namespaces"), (verb, res)
    for what in (("get", "secrets", "-n", ns), ("create", "pods", "-n", ns), ("delete", "pods", "-n", ns),
                 ("list", "configmaps", "-n", ns), ("patch", "nodes"), ("update", "leases", "-n", "default"),
                 ("create", "pods/exec", "-n", ns)):
        assert not can(*what), what
    assert can("update", "leases/rc-rawcap-k8s-watch", "-n", ns)
    assert not can("update", "leases/other", "-n", ns)
    consumer = f"system:serviceaccount:{ns}:rc-rawcap-consumer"
    assert k.kubectl("auth", "can-i", "list", "pods", "--as", consumer, check=False).stdout.strip() == "no"


def test_token_without_the_role_is_one_error_line(
    kube: KubeCluster, ns: str, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    kc = Kube(kube).token_kubeconfig(ns, "rc-rawcap-consumer", tmp_path / "kubeconfig")
    env = {**os.environ, "RAWCAP_BOOTSTRAP": make_config().get("kafka.bootstrap")}
    proc = subprocess.run([RAWCAP, "k8s-watch", "--kubeconfig", str(kc)], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rawcap: error: k8s-watch: list "), last
    assert "forbidden" in last and f"system:serviceaccount:{ns}:rc-rawcap-consumer" in last
    assert "cannot list resource" in last and "Traceback" not in proc.stderr


def _holder(k: Kube, ns: str) -> str:
    got = k.kubectl("get", "lease", "rc-rawcap-k8s-watch", "-n", ns, "-o", "json", check=False)
    if got.returncode != 0:
        return ""
    return str(json.loads(got.stdout)["spec"].get("holderIdentity") or "")


def _wait_holder(k: Kube, ns: str, want: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _holder(k, ns) == want:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"Lease holder is {_holder(k, ns)!r}, not {want!r}, after {timeout} s")


@pytest.mark.timeout(600)  # a real control plane + Kafka on 2 shared cores
def test_two_watchers_one_leads_and_the_other_takes_over(
    kube: KubeCluster, ns: str, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    k = Kube(kube)
    kc = k.token_kubeconfig(ns, "rc-rawcap-k8s-watch", tmp_path / "kubeconfig")
    base = {**os.environ, "RAWCAP_BOOTSTRAP": make_config().get("kafka.bootstrap"), "POD_NAMESPACE": ns}
    procs: dict[str, subprocess.Popen[str]] = {}
    logs: dict[str, Path] = {}

    def start(name: str) -> None:
        logs[name] = tmp_path / f"{name}.log"
        procs[name] = subprocess.Popen(
            [RAWCAP, "k8s-watch", "--kubeconfig", str(kc), "--no-filters", "--leader-elect",
             "--lease-name", "rc-rawcap-k8s-watch", f"--lease-duration={LEASE_S}s"],
            env={**base, "POD_NAME": name}, stdout=subprocess.DEVNULL,
            stderr=logs[name].open("w"), text=True)

    def watching(name: str) -> bool:
        return '"listed"' in logs[name].read_text() or " listed" in logs[name].read_text()

    try:
        start("watch-a")
        _wait_holder(k, ns, "watch-a", 60)
        start("watch-b")
        deadline = time.monotonic() + 60
        while not watching("watch-a") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert watching("watch-a"), logs["watch-a"].read_text()
        time.sleep(LEASE_S * 2)  # the standby keeps trying, and keeps failing
        assert _holder(k, ns) == "watch-a" and procs["watch-b"].poll() is None
        assert not watching("watch-b"), "a standby watched the API"

        procs["watch-a"].send_signal(signal.SIGKILL)  # a crash: the Lease is not released
        procs["watch-a"].wait(10)
        took = _wait_holder(k, ns, "watch-b", LEASE_S * 4)
        # the standby saw the Lease unchanged for a whole lease duration (by its own clock),
        # then took it on its next try (every duration / 7.5)
        assert took <= LEASE_S + LEASE_S / 7.5 + 2.0, f"took over after {took:.1f} s"
        deadline = time.monotonic() + 30
        while not watching("watch-b") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert watching("watch-b"), logs["watch-b"].read_text()

        start("watch-c")  # a new standby
        time.sleep(LEASE_S * 2)
        assert _holder(k, ns) == "watch-b" and procs["watch-c"].poll() is None
        procs["watch-b"].send_signal(signal.SIGTERM)  # a clean stop releases the Lease ...
        t_term = time.monotonic()
        _wait_holder(k, ns, "watch-c", LEASE_S * 4)
        # ... so the standby takes it at its next try, not a lease duration later
        after = time.monotonic() - t_term
        assert after < LEASE_S, f"the released Lease was taken {after:.1f} s after SIGTERM"
        assert procs["watch-b"].wait(30) == 0, logs["watch-b"].read_text()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        k.kubectl("delete", "namespace", ns, "--wait=false", check=False)
