"""Workloads on the session's real kube-apiserver (``kube`` fixture), made the way a cluster
makes them, with the test standing in for the two components this control plane lacks:

- the scheduler: a pod is bound to a Node through the ``pods/binding`` subresource;
- the kubelet: the pod's ``status`` (phase, podIP(s), Ready condition) is written through the
  ``pods/status`` subresource, with the addresses of the test's veth namespaces.

Everything else is real: Deployments and StatefulSets whose controllers create the pods (and
ReplicaSets, ownerReferences), Services whose EndpointSlices the EndpointSlice controller
writes from the Ready pods, and the chart's own RBAC for the watcher's ServiceAccount token.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rawcap.stack import KubeCluster
from tests.charts.helpers import CHART, helm, kubectl

__all__ = ("Kube",)


class Kube:
    def __init__(self, cluster: KubeCluster) -> None:
        self.cluster = cluster
        self.kc = cluster.kubeconfig

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return kubectl(self.kc, *args, input=input, check=check)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def get(self, *args: str) -> dict[str, Any]:
        doc = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        assert isinstance(doc, dict)
        return doc

    # --- the chart's RBAC and a ServiceAccount token ----------------------------------------
    def install_rbac(self, namespace: str, release: str = "rc", *sets: str) -> None:
        """The chart's ServiceAccounts, ClusterRole/Binding (and Lease Role) in ``namespace``."""
        args = ["template", release, str(CHART), "-n", namespace, "--set", "kafka.bootstrap=unused:9092",
                "--show-only", "templates/serviceaccounts.yaml", "--show-only", "templates/rbac.yaml"]
        for s in sets:
            args += ["--set", s]
        rendered = helm(*args).stdout
        self.kubectl("apply", "-n", namespace, "-f", "-", input=rendered)

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as ``namespace/service_account`` (bound token)."""
        token = self.kubectl("create", "token", service_account, "-n", namespace,
                             "--duration=2h").stdout.strip()
        ca = base64.b64encode(self.cluster.ca_file.read_bytes()).decode()
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "sa",
               "clusters": [{"name": "c", "cluster": {"server": self.cluster.server,
                                                      "certificate-authority-data": ca}}],
               "users": [{"name": service_account, "user": {"token": token}}],
               "contexts": [{"name": "sa", "context": {"cluster": "c", "user": service_account}}]}
        path.write_text(json.dumps(doc))
        return path

    # --- workloads ---------------------------------------------------------------------------
    def node(self, name: str, ip: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name}}})
        self.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"addresses": [{"type": "InternalIP", "address": ip},
                                      {"type": "Hostname", "address": name}]}}))

    def namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def deployment(self, namespace: str, name: str, replicas: int = 1) -> None:
        self.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                             "template": _template(name)}})

    def statefulset(self, namespace: str, name: str) -> None:
        self.apply({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                             "template": _template(name)}})

    def job(self, namespace: str, name: str) -> None:
        template = _template(name)
        template["spec"]["restartPolicy"] = "Never"
        self.apply({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": name, "namespace": namespace}, "spec": {"template": template}})

    def service(self, namespace: str, name: str, port: int) -> None:
        self.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"selector": {"app": name},
                             "ports": [{"port": port, "targetPort": port, "protocol": "TCP"}]}})

    def pods(self, namespace: str, app: str) -> list[dict[str, Any]]:
        return list(self.get("pods", "-n", namespace, "-l", f"app={app}")["items"])

    def wait_pod(self, namespace: str, app: str, *, exclude: set[str] = frozenset(),  # type: ignore[assignment]
                 timeout: float = 60) -> str:
        """The name of the (first) pod of ``app`` the controller has created, not in ``exclude``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = [p["metadata"]["name"] for p in self.pods(namespace, app)
                     if p["metadata"]["name"] not in exclude and not p["metadata"].get("deletionTimestamp")]
            if names:
                return sorted(names)[0]
            time.sleep(0.2)
        raise AssertionError(f"no pod of {namespace}/{app} within {timeout} s")

    def run_pod(self, namespace: str, pod: str, node: str, ip: str) -> None:
        """Schedule ``pod`` on ``node`` and report it Running and Ready at ``ip``."""
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod, "namespace": namespace},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self.kubectl("create", "-f", "-", input=json.dumps(binding))  # pods/binding: create only
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.200",
                  "startTime": now,
                  "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                                 for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}
        self.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": status}))

    def scale(self, namespace: str, kind: str, name: str, replicas: int) -> None:
        self.kubectl("scale", "-n", namespace, f"{kind}/{name}", f"--replicas={replicas}")

    def delete_pod(self, namespace: str, pod: str) -> None:
        # no kubelet confirms the shutdown: delete at once, as `kubectl delete --force` does
        self.kubectl("delete", "pod", pod, "-n", namespace, "--grace-period=0", "--force", "--wait=true",
                     "--ignore-not-found")


def _template(app: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": app}},
            "spec": {"containers": [{"name": "main", "image": "rawcap-test:none"}],
                     "terminationGracePeriodSeconds": 0,
                     # the nodes here have no kubelet: tolerate their not-ready taints forever
                     "tolerations": [{"operator": "Exists"}]}}
