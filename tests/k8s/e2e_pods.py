"""Pods that really run, end to end (not yet in the suite: it needs the control plane of
``rawcap stack up --k8s``, which lands with the k8s branch; then it becomes a test):

    python -m tests.k8s.e2e_pods --kubeconfig K --ca-file CA --bootstrap HOST:PORT \
        --image-archive compose/.cache/image/rawcap-src-<key>.oci.tar

1. a Node (containerd 2 + runc + CNI bridge + kubelet + scheduler) joins the control plane
   and the rawcap image is imported into containerd;
2. a server pod and a client pod from the image talk over the pod network (20 GETs, 200);
3. the capture agent as a DaemonSet pod (host network and PID, uid 0 with only NET_RAW,
   BPF, PERFMON, RuntimeDefault seccomp, read-only root, headers from the host) captures
   the node's bridge; after a graceful stop, ``rawcap pcap export`` from Kafka equals
   tcpdump on the node (every TCP/UDP packet, byte for byte).
Prints one line per check and ``N passed, M failed``; exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rawcap.packet import parse_l4
from rawcap.timeparse import format_ns
from tests.forensics.helpers import records

from .node import Node

IMAGE = "docker.io/rawcap/rawcap"
NONROOT = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
           "capabilities": {"drop": ["ALL"]}}


def _pod(name: str, command: list[str], tag: str, restart: str = "Always") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"restartPolicy": restart, "containers": [{
                "name": name, "image": f"{IMAGE}:{tag}", "imagePullPolicy": "Never", "command": command,
                "securityContext": NONROOT}]}}


def _agent(tag: str, iface: str, node: str, bootstrap: str, buffer: Path) -> dict:
    host = [("modules", "/lib/modules", True), ("src", "/usr/src", True),
            ("tracing", "/sys/kernel/tracing", False)]
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "rawcap-agent"},
            "spec": {"selector": {"matchLabels": {"app": "rawcap-agent"}}, "template": {
                "metadata": {"labels": {"app": "rawcap-agent"}},
                "spec": {"hostNetwork": True, "hostPID": True, "tolerations": [{"operator": "Exists"}],
                         "containers": [{
                             "name": "agent", "image": f"{IMAGE}:{tag}", "imagePullPolicy": "Never",
                             "args": ["capture", "--iface", iface, "--node", node],
                             "env": [{"name": "RAWCAP_BOOTSTRAP", "value": bootstrap},
                                     {"name": "RAWCAP_CAPTURE_BATCH_MAX_DELAY", "value": "0.3s"}],
                             "securityContext": {
                                 "runAsUser": 0, "runAsGroup": 0, "readOnlyRootFilesystem": True,
                                 "allowPrivilegeEscalation": False,
                                 "seccompProfile": {"type": "RuntimeDefault"},
                                 "capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "BPF", "PERFMON"]}},
                             "volumeMounts": [*({"name": n, "mountPath": p, "readOnly": ro}
                                                for n, p, ro in host),
                                              {"name": "buffer", "mountPath": "/var/lib/rawcap/buffer"},
                                              {"name": "tmp", "mountPath": "/tmp"}]}],
                         "volumes": [*({"name": n, "hostPath": {"path": p}} for n, p, _ in host),
                                     {"name": "buffer", "hostPath": {"path": str(buffer),
                                                                     "type": "DirectoryOrCreate"}},
                                     {"name": "tmp", "emptyDir": {}}]}}}}


class Kube:
    def __init__(self, kubectl: Path, kubeconfig: Path) -> None:
        self.argv = [str(kubectl), "--kubeconfig", str(kubeconfig)]

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        r = subprocess.run([*self.argv, *args], input=input, capture_output=True, text=True, timeout=300)
        if check and r.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr}")
        return r.stdout

    def apply(self, obj: dict) -> None:
        self("apply", "-f", "-", input=json.dumps(obj))

    def wait_phase(self, pod: str, phases: set[str], timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            phase = self("get", "pod", pod, "-o", "jsonpath={.status.phase}", check=False).strip()
            if phase in phases:
                return phase
            time.sleep(1)
        raise RuntimeError(f"pod {pod} not in {phases}: " + self("describe", "pod", pod, check=False)[-3000:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", type=Path, required=True)
    ap.add_argument("--ca-file", type=Path, required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--image-archive", type=Path, required=True)
    ap.add_argument("--bin-dir", type=Path, required=True,
                    help="containerd, ctr, kubelet, kube-scheduler, kubectl")
    ap.add_argument("--tag", default="0.1.0")
    a = ap.parse_args(argv)
    kube = Kube(a.bin_dir / "kubectl", a.kubeconfig)
    results: list[tuple[str, bool, str]] = []
    root = Path(tempfile.mkdtemp(prefix="rawcap-node-"))
    node = Node(root / "node", kubeconfig=a.kubeconfig, ca_file=a.ca_file, bin_dir=a.bin_dir)
    t = time.monotonic()
    node.start()
    results.append(("node Ready", True, f"{time.monotonic() - t:.0f} s"))
    try:
        t = time.monotonic()
        node.import_image(a.image_archive, IMAGE)
        results.append(("image imported", True, f"{time.monotonic() - t:.0f} s"))
        t = time.monotonic()
        kube.apply(_pod("web", ["python3", "-m", "http.server", "8080"], a.tag))
        kube.wait_phase("web", {"Running"})
        web_ip = kube("get", "pod", "web", "-o", "jsonpath={.status.podIP}").strip()
        results.append(("server pod Running", True, f"{web_ip} after {time.monotonic() - t:.0f} s"))

        buffer = root / "agent-buffer"
        kube.apply(_agent(a.tag, node.bridge, node.name, a.bootstrap, buffer))
        deadline = time.monotonic() + 300
        while not any("shipper connected" in f.read_text()
                      for f in (root / "node" / "pod-logs").glob("default_rawcap-agent-*/agent/0.log")):
            if time.monotonic() > deadline:
                described = kube("describe", "pods", "-l", "app=rawcap-agent")
                raise RuntimeError("agent never connected: " + described)
            time.sleep(1)
        time.sleep(2)
        ref = root / "node.pcap"
        t0 = time.time_ns()
        td = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(ref), "-U", "-s", "0",
                               "--time-stamp-precision", "nano", "-B", "16384"], stderr=subprocess.DEVNULL)
        time.sleep(2)
        code = ("import time, urllib.request as u\ntime.sleep(2)\n"
                f"print([u.urlopen('http://{web_ip}:8080/?i=%d' % i).status for i in range(20)])")
        kube.apply(_pod("client", ["python3", "-c", code], a.tag, restart="Never"))
        phase = kube.wait_phase("client", {"Succeeded", "Failed"})
        logs = list((root / "node" / "pod-logs").glob("default_client_*/client/0.log"))
        out = logs[0].read_text() if logs else ""
        results.append(("client pod talks to server pod", phase == "Succeeded" and "[200, 200" in out,
                        out.strip()[-120:]))
        time.sleep(2)
        kube("delete", "daemonset", "rawcap-agent", "--wait=true", "--timeout=120s")  # SIGTERM: flush
        td.send_signal(signal.SIGINT)
        td.wait(10)
        t1 = time.time_ns()
        export = root / "export.pcapng"
        rawcap = str(Path(sys.executable).with_name("rawcap"))
        p = subprocess.run([rawcap, "pcap", "export", "--node", node.name,
                            "--from", format_ns(t0)[:26] + "Z", "--to", format_ns(t1)[:26] + "Z",
                            "-o", str(export)], capture_output=True, text=True,
                           env={"RAWCAP_BOOTSTRAP": a.bootstrap, "PATH": "/usr/bin:/bin"})
        want = [r for r in records(ref) if parse_l4(r.data) is not None]
        got = records(export) if p.returncode == 0 else []
        same = [(r.caplen, r.origlen, bytes(r.data)) for r in got] == [
            (r.caplen, r.origlen, bytes(r.data)) for r in want]
        results.append(("agent DaemonSet capture from Kafka equals tcpdump on the node",
                        same and len(want) > 100,
                        f"{len(got)} exported, {len(want)} by tcpdump; {p.stderr.strip()}"))
    finally:
        kube("delete", "pods", "--all", "--grace-period=2", "--wait=true", check=False)
        kube("delete", "daemonset", "--all", check=False)
        node.stop()
        kube("delete", "node", node.name, check=False)
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    failed = sum(not ok for _, ok, _ in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
