"""charts/rawcap against the session's real kube-apiserver (``kube`` fixture): every rendered
manifest passes server-side dry-run, a value the schema lets through but Kubernetes refuses is
refused by the server, and helm install / upgrade / uninstall create, change and remove the
objects (no kubelet here: pods stay Pending, so the objects are what is checked)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from rawcap.stack import KubeCluster

from .helpers import CHART, VALUES, VALUES_FILES, helm, kubectl, template_text

pytestmark = pytest.mark.integration

CRDS = Path(__file__).with_name("crds.yaml")


@pytest.fixture(scope="module")
def cluster(kube: KubeCluster) -> KubeCluster:
    kubectl(kube.kubeconfig, "apply", "-f", str(CRDS))
    kubectl(kube.kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    return kube


def _namespace(kube: KubeCluster, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl(kube.kubeconfig, "create", "namespace", ns)
    return ns


def _get(kube: KubeCluster, *args: str) -> dict[str, Any]:
    doc = json.loads(kubectl(kube.kubeconfig, "get", *args, "-o", "json").stdout)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_manifest_passes_server_dry_run(cluster: KubeCluster, values: str) -> None:
    ns = _namespace(cluster, "dry")
    rendered = template_text(values, namespace=ns).stdout
    proc = kubectl(cluster.kubeconfig, "apply", "--dry-run=server", "-n", ns, "-f", "-", input=rendered)
    applied = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == rendered.count("\nkind: "), proc.stdout
    assert "daemonset.apps/rc-rawcap-agent created (server dry run)" in proc.stdout or \
        "tap.capture.raw.enabled" in values


@pytest.mark.parametrize(("sets", "message"), [
    # the schema leaves Kubernetes objects (resources, tolerations) to Kubernetes itself
    (("agent.resources.requests.memory=lots",), "quantities must match the regular expression"),
    (("agent.tolerations[0].operator=Sometimes",), "Unsupported value: \"Sometimes\""),
    (("podSecurityContext.runAsUser=-5",), "runAsUser"),
])
def test_a_broken_value_is_refused_by_the_server(cluster: KubeCluster, sets: tuple[str, ...],
                                                  message: str) -> None:
    ns = _namespace(cluster, "bad")
    rendered = template_text("minimal.yaml", sets=sets, namespace=ns).stdout
    proc = kubectl(cluster.kubeconfig, "apply", "--dry-run=server", "-n", ns, "-f", "-",
                   input=rendered, check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr
    # helm install refuses the same and, atomic, leaves nothing behind (release names are
    # unique per test: the ClusterRole is cluster-wide)
    inst = helm("install", ns, str(CHART), "-n", ns, "-f", str(VALUES / "minimal.yaml"), "--atomic",
                "--timeout", "60s", *[a for s in sets for a in ("--set", s)], kubeconfig=cluster.kubeconfig,
                check=False)
    assert inst.returncode != 0 and message in inst.stderr, inst.stderr
    assert not _get(cluster, "deployments,daemonsets,configmaps", "-n", ns, "-l",
                    f"app.kubernetes.io/instance={ns}")["items"]
    assert kubectl(cluster.kubeconfig, "get", "clusterrole", f"{ns}-rawcap-k8s-watch", check=False).returncode


def test_install_upgrade_uninstall(cluster: KubeCluster) -> None:
    ns = _namespace(cluster, "rel")
    kc = cluster.kubeconfig
    helm("install", "rc", str(CHART), "-n", ns, "-f", str(VALUES / "minimal.yaml"), "--wait=false",
         kubeconfig=kc)
    status = json.loads(helm("status", "rc", "-n", ns, "-o", "json", kubeconfig=kc).stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    ds = _get(cluster, "daemonset", "rc-rawcap-agent", "-n", ns)
    caps = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps["add"] == ["NET_RAW", "BPF", "PERFMON"]
    deps = {d["metadata"]["name"]: d for d in _get(cluster, "deployments", "-n", ns)["items"]}
    assert set(deps) == {"rc-rawcap-dissect", "rc-rawcap-enrich", "rc-rawcap-k8s-watch"}
    assert {p["metadata"]["name"] for p in _get(cluster, "pdb", "-n", ns)["items"]} == set(deps)
    assert _get(cluster, "clusterrole", "rc-rawcap-k8s-watch")["rules"]
    # the controller manager acts on them: ReplicaSets, and Pods that stay Pending (no kubelet)
    kubectl(kc, "wait", "-n", ns, "--for=jsonpath={.status.replicas}=1", "deployment/rc-rawcap-enrich",
            "--timeout=60s")
    pods = _get(cluster, "pods", "-n", ns, "-l", "app.kubernetes.io/component=enrich")["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Pending"
    checksum = deps["rc-rawcap-enrich"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    # upgrade: standby watchers with a Lease, another bootstrap (config checksum changes)
    helm("upgrade", "rc", str(CHART), "-n", ns, "-f", str(VALUES / "minimal.yaml"), "--set",
         "k8sWatch.replicas=2", "--set", "kafka.bootstrap=kafka-new:9092", "--set", "archive.enabled=true",
         "--set", "archive.url=s3://bucket/rawcap", kubeconfig=kc)
    watch = _get(cluster, "deployment", "rc-rawcap-k8s-watch", "-n", ns)
    assert watch["spec"]["replicas"] == 2
    assert "--leader-elect" in watch["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _get(cluster, "role", "rc-rawcap-k8s-watch-lease", "-n", ns)["rules"]
    enrich = _get(cluster, "deployment", "rc-rawcap-enrich", "-n", ns)
    assert enrich["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
    cm = _get(cluster, "configmap", "rc-rawcap", "-n", ns)
    assert 'bootstrap: "kafka-new:9092"' in cm["data"]["values.yaml"]
    names = {d["metadata"]["name"] for d in _get(cluster, "deployments", "-n", ns)["items"]}
    assert "rc-rawcap-archive" in names
    history = json.loads(helm("history", "rc", "-n", ns, "-o", "json", kubeconfig=kc).stdout)
    assert [h["revision"] for h in history] == [1, 2]

    helm("uninstall", "rc", "-n", ns, "--wait", "--timeout", "120s", kubeconfig=kc)
    assert not _get(cluster, "deployments,daemonsets,configmaps,serviceaccounts,roles", "-n", ns,
                    "-l", "app.kubernetes.io/instance=rc")["items"]
    gone = kubectl(kc, "get", "clusterrole", "rc-rawcap-k8s-watch", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
