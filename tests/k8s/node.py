"""A real Kubernetes worker node on this machine: containerd + runc + CNI bridge + kubelet (and
kube-scheduler), joined to a running control plane (etcd + kube-apiserver +
kube-controller-manager, e.g. ``rawcap stack up --k8s``), so that pods really run.

What this machine needs, found by running it (docs/image.md, "Pods that really run"):

- kubelet v1.36 speaks CRI v1 only: containerd 2.x (built from its Go module by
  compose/install-node.sh), with Debian's runc 1.1 and CNI plugins 1.1.
- cgroup v1 (hybrid) host: ``failCgroupV1: false``, ``cgroupDriver: cgroupfs``.
- no CAP_SYS_RESOURCE in this sandbox, so no process may lower its oom_score_adj (the
  kubelet asks -998 for sandboxes): containerd's ``restrict_oom_score_adj``.
- no registry: the pause image is built here (a static C program packed by umoci) and
  every image is imported with ``ctr images import``; pods use ``imagePullPolicy: Never``.
- the kubelet refuses a loopback node IP and this kernel has no dummy interfaces: the node
  IP is the CNI bridge's own address (the bridge is no gateway: pods get no default route,
  so nothing they send leaves the pod subnet).

    node = Node(root, kubeconfig=..., ca_file=..., bin_dir=cache/"bin")
    node.start(); node.import_image(oci_archive, "docker.io/library/rawcap")
    ...; node.stop()

Parallel test sessions get their own bridge, pod subnet (from RAWCAP_TEST_NETNS_TAG) and
free ports for the kubelet and the scheduler.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import zlib
from pathlib import Path

from rawcap.stack._proc import free_port

__all__ = ("Node",)

PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, 0); sigaction(SIGTERM, &q, 0); sigaction(SIGCHLD, &r, 0);
  for (;;) pause();
}
"""
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


class Node:
    """One node named ``name``; its state lives under ``root`` (removed by ``stop``)."""

    def __init__(self, root: Path, *, kubeconfig: Path, ca_file: Path, bin_dir: Path,
                 name: str = "rawcap-node", subnet: int | None = None) -> None:
        self.root, self.kubeconfig, self.ca_file, self.bin_dir = root, kubeconfig, ca_file, bin_dir
        self.name = name
        self.port, self.healthz_port, self.scheduler_port = free_port(), free_port(), free_port()
        tag = os.environ.get("RAWCAP_TEST_NETNS_TAG", "")
        if subnet is None:  # 10.234.<1-250>.0/24, apart for sessions with different tags
            subnet = 1 + zlib.crc32(tag.encode()) % 250
        self.bridge = f"{tag}k8sbr{subnet}"[:15]
        self.node_ip = f"10.234.{subnet}.1"
        self.pod_cidr = f"10.234.{subnet}.0/24"
        self.sock = root / "containerd" / "containerd.sock"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}  # seconds: "Ready" (start), "import <image>"

    # --- configuration ------------------------------------------------------------------
    def _write_configs(self) -> None:
        r = self.root
        (r / "containerd").mkdir(parents=True, exist_ok=True)
        (r / "cni").mkdir(exist_ok=True)
        (r / "kubelet").mkdir(exist_ok=True)
        (r / "containerd" / "config.toml").write_text(f"""version = 3
root = "{r}/containerd/root"
state = "{r}/containerd/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{r}/cni"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
""")
        (r / "cni" / "10-rawcap.conflist").write_text(f"""{{"cniVersion": "1.0.0", "name": "rawcap",
 "plugins": [{{"type": "bridge", "bridge": "{self.bridge}", "isGateway": false, "ipMasq": false,
              "ipam": {{"type": "host-local", "dataDir": "{r}/cni/ipam",
                       "ranges": [[{{"subnet": "{self.pod_cidr}",
                                    "rangeStart": "{self.pod_cidr[:-4]}16"}}]]}}}},
             {{"type": "loopback"}}]}}
""")
        (r / "kubelet" / "config.yaml").write_text(f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://{self.sock}
address: {self.node_ip}
port: {self.port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {self.healthz_port}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {self.ca_file}}}
authorization: {{mode: AlwaysAllow}}
failSwapOn: false
resolvConf: ""
evictionHard: {{}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
podLogsDir: {r}/pod-logs
""")

    def _pause_archive(self) -> Path:
        out = self.root / "pause"
        out.mkdir(exist_ok=True)
        (out / "pause.c").write_text(PAUSE_C)
        subprocess.run(["gcc", "-Os", "-static", "-o", str(out / "pause"), str(out / "pause.c")], check=True)
        layout = f"{out}/oci"
        for argv in (["umoci", "init", "--layout", layout], ["umoci", "new", "--image", f"{layout}:3.10"],
                     ["umoci", "insert", "--image", f"{layout}:3.10", str(out / "pause"), "/pause"],
                     ["umoci", "config", "--image", f"{layout}:3.10", "--config.entrypoint", "/pause",
                      "--config.user", "65535:65535"]):
            subprocess.run(argv, check=True, capture_output=True)
        archive = out / "pause.tar"
        subprocess.run(["tar", "-C", layout, "-cf", str(archive), "."], check=True)
        return archive

    # --- lifecycle ----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # the process's own log
        env = {**os.environ, "PATH": f"{self.bin_dir}:{os.environ['PATH']}"}
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin_dir / "ctr"), "--address", str(self.sock), "-n", "k8s.io", *args],
                              check=True, capture_output=True, text=True, timeout=600)

    def import_image(self, archive: Path, base_name: str) -> None:
        """An oci-archive into containerd's k8s.io namespace as ``base_name:<its tag>``."""
        t = time.monotonic()
        self.ctr("images", "import", "--base-name", base_name, str(archive))
        self.timings[f"import {base_name}"] = time.monotonic() - t

    def container_pid(self, container_id: str) -> int:
        """The host pid of a running container (``containerd://<id>`` or the bare id)."""
        cid = container_id.removeprefix("containerd://")
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == cid:
                return int(pid)
        raise LookupError(f"no running task {cid} in containerd")

    def start(self, timeout: float = 180) -> None:
        """containerd, the pause image, kube-scheduler and the kubelet; returns once the
        node is Ready."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_configs()
        # the bridge exists before any pod, with the node's address on it
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], capture_output=True)
        subprocess.run(["ip", "addr", "replace", f"{self.node_ip}/24", "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self._spawn("containerd", [str(self.bin_dir / "containerd"), "--config",
                                   str(self.root / "containerd" / "config.toml")])
        deadline = time.monotonic() + timeout
        while not self.sock.exists():
            if time.monotonic() > deadline or self.procs["containerd"].poll() is not None:
                log = (self.root / "containerd.log").read_text()[-2000:]
                raise RuntimeError("containerd did not start: " + log)
            time.sleep(0.2)
        self.import_image(self._pause_archive(), PAUSE_IMAGE.rsplit(":", 1)[0])
        kc = str(self.kubeconfig)
        self._spawn("kube-scheduler", [str(self.bin_dir / "kube-scheduler"), "--kubeconfig", kc,
                                       "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
                                       "--bind-address", "127.0.0.1",
                                       "--secure-port", str(self.scheduler_port),
                                       "--leader-elect=false"])
        kubelet = self.root / "kubelet"
        self._spawn("kubelet", [str(self.bin_dir / "kubelet"), "--config", str(kubelet / "config.yaml"),
                                "--kubeconfig", kc, "--root-dir", str(kubelet / "root"),
                                "--cert-dir", str(kubelet / "pki"), "--hostname-override", self.name,
                                "--node-ip", self.node_ip])
        while True:
            r = subprocess.run([str(self.bin_dir / "kubectl"), "--kubeconfig", kc, "get", "node", self.name,
                                "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                               capture_output=True, text=True)
            if r.stdout.strip() == "True":
                self.timings["Ready"] = time.monotonic() - t0
                return
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited: " + (self.root / f"{name}.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("node not Ready: " + (self.root / "kubelet.log").read_text()[-2000:])
            time.sleep(1)

    def stop(self) -> None:
        """Kubelet and scheduler first, then every container and containerd; state removed."""
        for name in ("kubelet", "kube-scheduler"):
            p = self.procs.pop(name, None)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        if "containerd" in self.procs:
            # stop what containerd runs (the shims outlive containerd otherwise)
            tasks = subprocess.run([str(self.bin_dir / "ctr"), "--address", str(self.sock), "-n", "k8s.io",
                                    "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split()
            ctr = [str(self.bin_dir / "ctr"), "--address", str(self.sock), "-n", "k8s.io", "tasks"]
            for task in tasks:
                subprocess.run([*ctr, "kill", "-s", "SIGKILL", task], capture_output=True)
            for task in tasks:  # a deleted task's shim exits; a shim left alone outlives containerd
                subprocess.run([*ctr, "delete", "--force", task], capture_output=True, timeout=60)
            p = self.procs.pop("containerd")
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        # kubelet's and containerd's mounts under root go before the files
        mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
                  if ln.split()[1].startswith(str(self.root))]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
