"""``rawcap stack up --k8s``: etcd + kube-apiserver + kube-controller-manager beside Kafka and
MinIO, with a kubeconfig that kubectl (ours and the machine's older one) and helm use as is."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rawcap.stack import KubeCluster, find_kube

from .test_stack import rawcap

pytestmark = pytest.mark.integration


def test_status_json_names_the_server_and_kubeconfig(kube: KubeCluster) -> None:
    proc = rawcap("stack", "status", "--json", "--data-dir", str(kube.root.parent), "--kafka-port", "1",
                  "--s3-port", "2", check=False)
    assert proc.returncode == 1  # Kafka and MinIO are not running in this stack
    doc = json.loads(proc.stdout)
    assert doc["k8s"] == {"server": kube.server, "kubeconfig": str(kube.kubeconfig), "up": True}
    assert kube.server.startswith("https://127.0.0.1:")
    text = rawcap("stack", "status", "--data-dir", str(kube.root.parent), "--kafka-port", "1",
                  "--s3-port", "2", check=False).stdout
    assert f"k8s    up    server     {kube.server}" in text


def test_kubeconfig_works_with_kubectl_and_helm(kube: KubeCluster) -> None:
    kc = str(kube.kubeconfig)
    ours = subprocess.run([str(find_kube("kubectl")), "--kubeconfig", kc, "version", "-o", "json"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(ours.stdout)["serverVersion"]["gitVersion"] == "v1.36.3"
    # the controller manager runs: every namespace has its default ServiceAccount
    sa = subprocess.run([str(find_kube("kubectl")), "--kubeconfig", kc, "get", "serviceaccount", "default",
                         "-n", "kube-system", "-o", "name"], capture_output=True, text=True, timeout=60)
    assert sa.stdout.strip() == "serviceaccount/default", sa.stderr
    helm = subprocess.run([str(find_kube("helm")), "--kubeconfig", kc, "list", "-A", "-o", "json"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert isinstance(json.loads(helm.stdout), list)
    machine = shutil.which("kubectl", path="/usr/bin")
    if machine is not None:  # the image's kubectl 1.32 against this 1.36 server
        got = subprocess.run([machine, "--kubeconfig", kc, "get", "namespace", "default", "-o", "name"],
                             capture_output=True, text=True, timeout=60)
        assert got.stdout.strip() == "namespace/default", got.stderr


@pytest.mark.timeout(600)  # Kafka + MinIO + the control plane, on 2 shared cores
def test_up_k8s_then_down(tmp_path: Path) -> None:
    d = str(tmp_path / "st")
    up = rawcap("stack", "up", "--k8s", "--json", "--data-dir", d, "--kafka-port", "0", "--s3-port", "0",
                "--timeout", "400")
    doc = json.loads(up.stdout)
    try:
        assert doc["kafka"]["up"] and doc["s3"]["up"]
        assert doc["k8s"]["up"] is True and doc["k8s"]["kubeconfig"] == f"{tmp_path}/st/k8s/admin.kubeconfig"
        cluster = KubeCluster(tmp_path / "st" / "k8s")
        assert all(pid is not None for pid in cluster.pids().values())
        # idempotent: up again restarts nothing
        pids = cluster.pids()
        again = json.loads(rawcap("stack", "up", "--k8s", "--json", "--data-dir", d).stdout)
        assert again["k8s"] == doc["k8s"] and cluster.pids() == pids
    finally:
        down = json.loads(rawcap("stack", "down", "--json", "--data-dir", d).stdout)
    assert down == {"stopped": {"kafka": True, "s3": True, "k8s": True}}
    assert all(pid is None for pid in cluster.pids().values())
    after = json.loads(rawcap("stack", "status", "--json", "--data-dir", d, check=False).stdout)
    assert after["k8s"]["up"] is False
