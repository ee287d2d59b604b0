"""Records on ``rawcap.procs``: which process and container a TCP/UDP flow belongs to.

The capture agent attributes flows on the syscall side (``connect``, ``sendto``/``sendmsg``,
``listen``), where the kernel's notion of the current task is the process that owns the
socket; a softirq-side event would name whatever task happened to be running. One record
is one observation; the Kafka key is the node name, the value a msgpack map with short,
fixed keys (``PROC_KEYS``) so that a record costs a few dozen bytes.

``kind``: ``tcp`` (an outgoing TCP connection reached ESTABLISHED: full 5-tuple),
``listen`` (a TCP socket started listening: local address and port; flows to it belong to
this process), ``connect`` (connect() on a socket, e.g. UDP: destination only, source port
0 when not yet bound), ``udp`` (a datagram sent to an explicit destination; deduplicated
per process and destination in the kernel for ``PROCS_DEDUP_S`` seconds).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any, Final

import msgpack

__all__ = (
    "KINDS",
    "PROCS_DEDUP_S",
    "PROC_KEYS",
    "ProcRecord",
    "decode_proc",
    "parse_container",
)

KINDS: Final = ("tcp", "listen", "connect", "udp")
PROCS_DEDUP_S: Final = 10
PROC_KEYS: Final = {
    "ts_ns": "t", "node": "n", "kind": "k", "pid": "p", "tid": "i", "comm": "c",
    "cgroup_id": "g", "cgroup_path": "gp", "container_id": "ci", "runtime": "rt",
    "pod_uid": "pu", "proto": "pr", "saddr": "sa", "sport": "sp", "daddr": "da", "dport": "dp",
}
_BY_SHORT: Final = {v: k for k, v in PROC_KEYS.items()}

# cri-containerd-<id>.scope (containerd, systemd driver), crio-<id>.scope (CRI-O),
# docker-<id>.scope or /docker/<id> (Docker), libpod-<id>.scope (podman), and the bare
# /kubepods/<qos>/pod<uid>/<id> of the cgroupfs driver.
_CONTAINER = re.compile(
    r"(?:^|/)(?:(cri-containerd|crio|docker|libpod)-)?([0-9a-f]{64})(?:\.scope)?$"
)
_DOCKER_DIR = re.compile(r"/docker/([0-9a-f]{64})$")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_RUNTIME = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker", "libpod": "podman"}


def parse_container(cgroup_path: str) -> tuple[str, str, str]:
    """``(container_id, runtime, pod_uid)`` from a cgroup v2 path; empty strings if none."""
    path = cgroup_path.rstrip("/")
    pod = _POD.search(path)
    pod_uid = pod.group(1).replace("_", "-") if pod else ""
    m = _DOCKER_DIR.search(path)
    if m:
        return m.group(1), "docker", pod_uid
    m = _CONTAINER.search(path)
    if not m:
        return "", "", pod_uid
    prefix = m.group(1)
    runtime = _RUNTIME.get(prefix or "", "containerd" if pod_uid else "")
    return m.group(2), runtime, pod_uid


@dataclass(frozen=True, slots=True)
class ProcRecord:
    ts_ns: int
    node: str
    kind: str
    pid: int
    tid: int
    comm: str
    cgroup_id: int
    cgroup_path: str = ""
    container_id: str = ""
    runtime: str = ""
    pod_uid: str = ""
    proto: int = 0  # 6 TCP, 17 UDP, 0 unknown (connect on a socket of unknown type)
    saddr: str = ""
    sport: int = 0
    daddr: str = ""
    dport: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"procs record kind {self.kind!r} is not one of {KINDS}")
        for a in (self.saddr, self.daddr):
            if a:
                ipaddress.ip_address(a)

    def encode(self) -> bytes:
        return msgpack.packb({PROC_KEYS[k]: v for k, v in asdict(self).items()}, use_bin_type=True)


def decode_proc(value: bytes) -> ProcRecord:
    """Decode a ``rawcap.procs`` value; raises ValueError on anything malformed."""
    try:
        doc: Any = msgpack.unpackb(value, raw=False)
    except Exception as exc:
        raise ValueError(f"procs record is not msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("procs record is not a map")
    fields = {_BY_SHORT[k]: v for k, v in doc.items() if k in _BY_SHORT}
    try:
        return ProcRecord(**fields)
    except TypeError as exc:
        raise ValueError(f"procs record is missing fields: {exc}") from None
