"""Containers of the rawcap image, run by runc from its OCI layout (no daemon, no registry).

The image is unpacked once (``umoci raw unpack``) into a root filesystem that every
container mounts READ-ONLY, and ``umoci raw runtime-config`` turns the image config
(entrypoint, user, env, working directory) into an OCI runtime spec, as containerd does for
a pod; each container gets a copy of that spec with what its pod would set: arguments,
user, capabilities (everything else dropped), host network / pid namespaces, bind mounts.
runc is the runtime containerd itself runs, so what passes here is what a kubelet starts.

API::

    img = RawcapImage.unpack(layout, tag, into=tmp_dir)
    c = img.container(["consume", "--json"], env={...}, host_network=True)
    r = c.run(timeout=60)                         # CompletedProcess (text)
    p = c.start(); p.wait_for("capture running"); p.stop()   # tests.capture.helpers.Proc
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.capture.helpers import Proc

__all__ = ("Container", "RawcapImage")


@dataclass
class RawcapImage:
    """An unpacked image: ``rootfs`` (shared, read-only) and the runtime spec of its config."""

    layout: Path
    tag: str
    rootfs: Path
    spec: dict[str, Any]
    state_dir: Path
    workdir: Path

    @classmethod
    def unpack(cls, layout: Path, tag: str, into: Path) -> RawcapImage:
        ref = f"{layout}:{tag}"
        rootfs = into / "rootfs"
        subprocess.run(["umoci", "raw", "unpack", "--image", ref, str(rootfs)], check=True,
                       capture_output=True, timeout=600)
        subprocess.run(["umoci", "raw", "runtime-config", "--image", ref, "--rootfs", str(rootfs),
                        str(into / "config.json")], check=True, capture_output=True, timeout=60)
        spec = json.loads((into / "config.json").read_text())
        (into / "runc").mkdir()
        (into / "bundles").mkdir()
        return cls(layout, tag, rootfs, spec, into / "runc", into / "bundles")

    def container(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
                  user: tuple[int, int] | None = None, caps: Iterable[str] = (),
                  host_network: bool = False, host_pid: bool = False,
                  binds: Iterable[tuple[str | Path, str, bool]] = (),
                  writable: Iterable[str] = (), host_cgroup: bool = False,
                  command: Sequence[str] | None = None) -> Container:
        """A container running the image's entrypoint with ``args`` (a pod's ``args``).

        ``caps``: capability names without ``CAP_`` (NET_RAW, ...); all others are dropped.
        ``binds``: (host path, container path, read_only). ``writable``: container paths
        that get a fresh tmpfs owned by the container's user (as an emptyDir would be).
        ``host_cgroup``: the host's /sys/fs/cgroup read-only, instead of the container's own.
        ``command``: replaces the entrypoint (a pod's ``command``).
        """
        spec = copy.deepcopy(self.spec)
        proc = spec["process"]
        proc["terminal"] = False
        # entrypoint (or command) + args: the image's CMD is replaced, as a pod's args do
        proc["args"] = [*(command if command is not None else proc["args"][:1]), *args]
        proc["env"] = [e for e in proc["env"] if e.split("=", 1)[0] not in (env or {})]
        proc["env"] += [f"{k}={v}" for k, v in (env or {}).items()]
        if user is not None:
            proc["user"] = {"uid": user[0], "gid": user[1]}
        uid, gid = proc["user"]["uid"], proc["user"]["gid"]
        names = sorted(f"CAP_{c}" for c in caps)
        proc["capabilities"] = {"bounding": names, "effective": names, "permitted": names,
                                "inheritable": [], "ambient": []}
        proc["noNewPrivileges"] = True
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        spec["hostname"] = "rawcap"
        drop = {"network"} if host_network else set()
        drop |= {"pid"} if host_pid else set()
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] not in drop]
        mounts = spec["mounts"]
        if host_cgroup:
            mounts = [m for m in mounts if m["destination"] != "/sys/fs/cgroup"]
            mounts.append({"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup",
                           "options": ["rbind", "ro"]})
        mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777", "size=256m"]})
        for path in writable:
            mounts.append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=0755", f"uid={uid}", f"gid={gid}",
                                       "size=512m"]})
        for src, dst, ro in binds:
            mounts.append({"destination": dst, "type": "bind", "source": str(src),
                           "options": ["rbind", "ro" if ro else "rw"]})
        spec["mounts"] = mounts
        name = f"rawcap-{uuid.uuid4().hex[:12]}"
        bundle = self.workdir / name
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        return Container(name, bundle, self.state_dir, spec)


@dataclass
class Container:
    """One runc container (``runc run`` in the foreground: signals to it reach the process)."""

    name: str
    bundle: Path
    state_dir: Path
    spec: dict[str, Any] = field(repr=False)

    @property
    def argv(self) -> list[str]:
        return ["runc", "--root", str(self.state_dir), "run", "--bundle", str(self.bundle), self.name]

    def run(self, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(self.argv, capture_output=True, text=True, timeout=timeout,
                                  input=input, stdin=None if input is not None else subprocess.DEVNULL)
        finally:
            self.delete()

    def start(self) -> Proc:
        """The container running; ``Proc.stop()`` sends SIGTERM through runc; then ``delete()``."""
        return Proc(self.argv)

    def delete(self) -> None:
        subprocess.run(["runc", "--root", str(self.state_dir), "delete", "--force", self.name],
                       capture_output=True, timeout=60)
