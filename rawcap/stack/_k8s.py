"""The local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager.

All three come from one multi-call binary (``rawcap-kube``, built by compose/install-k8s.sh)
and listen on 127.0.0.1 only. Everything lives under ``<dataDir>/k8s``: certificates made on
the spot with openssl (a CA, the API server's serving certificate, client certificates for
the admin and the controller manager, the service-account signing key pair), etcd's data, the
ports of the last start (``state.json``) and ``admin.kubeconfig``, a kubeconfig with the
certificates embedded that kubectl, helm and ``rawcap k8s-watch`` use as they are.

The controller manager is what makes the API behave like a cluster's: the ``default``
ServiceAccount of each namespace, service-account tokens, EndpointSlices of Services,
ReplicaSets of Deployments, garbage collection. Without a scheduler and a kubelet, pods stay
Pending (their status can still be written through the ``status`` subresource).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.errors import RawcapError, TransportError

from . import _proc
from ._paths import cache_dir, read_state

__all__ = ("KubeCluster", "find_kube")

#: The Service network of the local cluster (objects only: nothing routes it here).
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
_SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
_HINT = "run `make setup` (or compose/install-k8s.sh)"


def find_kube(command: str = "kube-apiserver") -> Path:
    """The cached ``command`` (a symlink to rawcap-kube), else one on PATH."""
    local = cache_dir() / "bin" / command
    if local.exists() and os.access(local, os.X_OK):
        return local
    found = shutil.which(command)
    if found:
        return Path(found)
    raise RawcapError(f"{command} not found in {local.parent} or on PATH: {_HINT}")


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RawcapError("openssl not found: apt-get install openssl") from None
    except subprocess.CalledProcessError as exc:
        msg = (exc.stderr or "").strip().splitlines()
        raise RawcapError(f"openssl {args[0]} failed: {msg[-1] if msg else exc.returncode}") from None


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _cert(pki: Path, name: str, subject: str, *, ext: str, days: int = 3650) -> None:
    """``<name>.key`` + ``<name>.crt`` signed by the CA in ``pki`` with the extensions ``ext``."""
    _key(pki / f"{name}.key")
    (pki / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", "-key", str(pki / f"{name}.key"), "-subj", subject,
             "-out", str(pki / f"{name}.csr"))
    _openssl("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"),
             "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", str(days),
             "-extfile", str(pki / f"{name}.ext"), "-out", str(pki / f"{name}.crt"))
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


_CLIENT_EXT = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"


class KubeCluster:
    """etcd, kube-apiserver and kube-controller-manager whose state lives in ``root``.

    Ports are remembered in ``<root>/state.json``: a cluster started once comes back on the
    same ports (kubeconfigs handed out stay valid); new ones are free ports.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.pki = self.root / "pki"
        self._state_file = self.root / "state.json"
        state = self._load_state()
        self.api_port: int = state.get("api_port") or 0
        self.etcd_port: int = state.get("etcd_port") or 0
        self.etcd_peer_port: int = state.get("etcd_peer_port") or 0
        self.cm_port: int = state.get("cm_port") or 0

    # --- what clients need -------------------------------------------------------------
    @property
    def configured(self) -> bool:
        """True once this cluster has been started (it has ports and a kubeconfig)."""
        return self._state_file.exists() and self.kubeconfig.exists()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}" if self.api_port else ""

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    def log_file(self, component: str) -> Path:
        return self.root / f"{component}.log"

    def _pid_file(self, component: str) -> Path:
        return self.root / f"{component}.pid"

    @property
    def _marker(self) -> str:
        return str(self.root)

    def pid(self, component: str = "kube-apiserver") -> int | None:
        return _proc.running_pid(self._pid_file(component), self._marker)

    def pids(self) -> dict[str, int | None]:
        return {c: self.pid(c) for c in _COMPONENTS}

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the API server against the local CA and presents the admin certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """``GET path`` as the admin; (HTTP status, parsed JSON body or text)."""
        req = urllib.request.Request(self.server + path, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def answers(self) -> bool:
        """True when the API server reports ready (``/readyz``)."""
        if not self.api_port or not self.ca_file.exists():
            return False
        try:
            return self.get("/readyz", timeout=2.0)[0] == 200
        except (OSError, ssl.SSLError):
            return False

    def status(self) -> dict[str, Any]:
        return {"server": self.server, "kubeconfig": str(self.kubeconfig),
                "up": all(p is not None for p in self.pids().values()) and self.answers()}

    # --- files ---------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        return read_state(self._state_file)

    def _save_state(self) -> None:
        state = {"api_port": self.api_port, "etcd_port": self.etcd_port,
                 "etcd_peer_port": self.etcd_peer_port, "cm_port": self.cm_port}
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self._state_file)

    def _make_pki(self) -> None:
        """CA, serving and client certificates, service-account keys: made once, kept."""
        pki = self.pki
        if (pki / ".complete").exists():
            return
        pki.mkdir(parents=True, exist_ok=True)
        _key(pki / "ca.key")
        _openssl("req", "-x509", "-new", "-key", str(pki / "ca.key"), "-subj", "/CN=rawcap-local-ca",
                 "-days", "3650", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                 "-out", str(pki / "ca.crt"))
        names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost"]
        san = ",".join([*(f"DNS:{n}" for n in names), "IP:127.0.0.1", f"IP:{KUBERNETES_SERVICE_IP}"])
        _cert(pki, "apiserver", "/CN=kube-apiserver", ext=(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={san}\n"))
        _cert(pki, "admin", "/O=system:masters/CN=rawcap-admin", ext=_CLIENT_EXT)
        _cert(pki, "controller-manager", "/CN=system:kube-controller-manager", ext=_CLIENT_EXT)
        _key(pki / "sa.key")
        _openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
        (pki / ".complete").touch()

    def _write_kubeconfig(self, path: Path, user: str, cert: str) -> None:
        def b64(name: str) -> str:
            return base64.b64encode((self.pki / name).read_bytes()).decode()

        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "rawcap-local",
            "clusters": [{"name": "rawcap-local", "cluster": {
                "server": self.server, "certificate-authority-data": b64("ca.crt")}}],
            "users": [{"name": user, "user": {"client-certificate-data": b64(f"{cert}.crt"),
                                              "client-key-data": b64(f"{cert}.key")}}],
            "contexts": [{"name": "rawcap-local", "context": {"cluster": "rawcap-local", "user": user}}],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML: every client reads it
        tmp.chmod(0o600)
        tmp.replace(path)

    # --- lifecycle -----------------------------------------------------------------------
    def _argv(self, component: str) -> list[str]:
        pki, root = self.pki, self.root
        if component == "etcd":
            client, peer = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer_port}"
            return [str(find_kube("etcd")), "--name", "rawcap", "--data-dir", str(root / "etcd"),
                    "--listen-client-urls", client, "--advertise-client-urls", client,
                    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", f"rawcap={peer}", "--log-level", "warn",
                    # a throwaway local cluster: no fsync per write (tests create many objects)
                    "--unsafe-no-fsync"]
        if component == "kube-apiserver":
            return [str(find_kube("kube-apiserver")),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    f"--secure-port={self.api_port}", f"--cert-dir={root / 'apiserver'}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--kubelet-client-certificate={pki / 'admin.crt'}",
                    f"--kubelet-client-key={pki / 'admin.key'}",
                    # exec/logs/port-forward dial the kubelet at the node's InternalIP: a
                    # node name need not resolve (the test node's does not)
                    "--kubelet-preferred-address-types=InternalIP,Hostname",
                    f"--service-account-issuer={_SA_ISSUER}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=Node,RBAC", "--allow-privileged=true",
                    # the advertise address is loopback, which an Endpoints object may not hold
                    "--endpoint-reconciler-type=none", "--profiling=false"]
        return [str(find_kube("kube-controller-manager")),
                f"--kubeconfig={root / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={root / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={root / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1", f"--secure-port={self.cm_port}",
                f"--cert-dir={root / 'controller-manager'}",
                "--use-service-account-credentials=true", "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--profiling=false"]

    def _spawn(self, component: str) -> None:
        if self.pid(component) is not None:
            return
        _proc.spawn(self._argv(component), log_file=self.log_file(component),
                    pid_file=self._pid_file(component))

    def _wait(self, component: str, ready: Callable[[], bool], deadline: float) -> None:
        while not ready():
            if self.pid(component) is None:
                time.sleep(0.5)  # a pid file written a moment ago, or a real exit: look again
                if self.pid(component) is None:
                    raise TransportError(
                        f"{component} exited while starting; see {self.log_file(component)}: "
                        f"{_proc.tail(self.log_file(component), 1)}")
            if time.monotonic() >= deadline:
                raise TransportError(f"{component} did not become ready in time; "
                                     f"see {self.log_file(component)}")
            time.sleep(0.25)

    def _default_sa(self) -> bool:
        try:
            return self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
        except (OSError, ssl.SSLError):
            return False

    def start(self, timeout: float = 180.0) -> None:
        """Start what is not running and wait until the API server is ready and the
        controller manager has created the ``default`` ServiceAccount."""
        deadline = time.monotonic() + timeout
        self.root.mkdir(parents=True, exist_ok=True)
        running = {c: p is not None for c, p in self.pids().items()}
        for attr, component in (("etcd_port", "etcd"), ("etcd_peer_port", "etcd"),
                                ("api_port", "kube-apiserver"), ("cm_port", "kube-controller-manager")):
            port = getattr(self, attr)
            if not port or (not running[component] and _proc.port_open(port)):
                setattr(self, attr, _proc.free_port())  # remembered port taken meanwhile: move
        self._make_pki()
        self._save_state()
        self._write_kubeconfig(self.kubeconfig, "rawcap-admin", "admin")
        self._write_kubeconfig(self.root / "controller-manager.kubeconfig",
                               "system:kube-controller-manager", "controller-manager")
        self._spawn("etcd")
        self._wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{self.etcd_port}/health"), deadline)
        self._spawn("kube-apiserver")
        self._wait("kube-apiserver", self.answers, deadline)
        self._spawn("kube-controller-manager")
        self._wait("kube-controller-manager", self._default_sa, deadline)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the three (controller manager first, etcd last); True if any was running."""
        was = False
        for component in reversed(_COMPONENTS):
            was = _proc.stop(self._pid_file(component), self._marker, timeout) or was
        return was


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False
