"""The user's commands for ``bench/dissect``: a pcap brought into Kafka with ``rawcap pcap
import``, ``rawcap dissect --from -3h --to now --node N`` with default flags (local calls
store, rawcap.calls, workload names from a ``rawcap.k8s`` holding ``--pods`` pods), the
engine alone from Kafka (``-q --no-store --no-publish --no-k8s``), tshark on the same file,
and ``rawcap calls`` queries; each timed as a whole process (wall and CPU seconds)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from rawcap.pcap import read_capture  # noqa: E402
from schemas.k8s import PodRecord, ServiceRecord, encode_k8s  # noqa: E402

__all__ = ("Run", "capture_facts", "local_stack", "populate_store", "retime", "seed_k8s",
           "timed")

RAWCAP = os.path.join(os.path.dirname(sys.executable), "rawcap")
PACKAGES = ("rawcap", "schemas", "forensics", "capture", "enrich", "archiver", "dissector")
S = 1_000_000_000


@dataclass
class Run:
    wall: float
    cpu: float
    lines: int
    stderr: str


def timed(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` as a whole process; stdout is counted (lines) by a thread of ours, so the
    child pays for writing its output and not for anyone reading it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    counts = [0]

    def count() -> None:
        assert p.stdout is not None
        while chunk := p.stdout.read(1 << 20):
            counts[0] += chunk.count(b"\n")

    reader = threading.Thread(target=count)
    reader.start()
    assert p.stderr is not None
    err = p.stderr.read().decode(errors="replace")
    p.wait()
    wall = time.perf_counter() - t
    reader.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}): {err.strip()[-500:]}")
    return Run(wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
               counts[0], err)


def compile_bytecode() -> None:
    """What ``pip install`` does for a wheel: with ``PYTHONDONTWRITEBYTECODE=1`` an editable
    checkout would otherwise compile every changed module at every start."""
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    *(os.path.join(ROOT, p) for p in PACKAGES)],
                   check=True, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def local_stack(bootstrap: str | None) -> Iterator[str]:
    """``bootstrap`` as given, else a private stack (free ports, its own data dir) started for
    the run and stopped after it."""
    if bootstrap:
        yield bootstrap
        return
    data = tempfile.mkdtemp(prefix="rawcap-bench-stack-")
    out = subprocess.run([RAWCAP, "stack", "up", "--data-dir", data, "--kafka-port", "0",
                          "--s3-port", "0", "--json"], capture_output=True, text=True, check=True)
    try:
        yield json.loads(out.stdout.strip().splitlines()[-1])["kafka"]["bootstrap"]
    finally:
        subprocess.run([RAWCAP, "stack", "down", "--data-dir", data], capture_output=True)
        subprocess.run(["rm", "-rf", data], check=False)


def capture_facts(path: str) -> dict[str, Any]:
    """Packets, first/last time, and the busiest TCP client -> server:port pair."""
    n, first, last = 0, None, 0
    pairs: dict[tuple[bytes, bytes], int] = {}
    with open(path, "rb") as fh:
        for recs in read_capture(fh, name=path, chunk=8 << 20):
            for r in recs:
                n += 1
                first = r.ts_ns if first is None else first
                last = r.ts_ns
                d = bytes(r.data[:54])
                if len(d) >= 54 and d[12:14] == b"\x08\x00" and d[23] == 6 and d[47] & 0x02 \
                        and not d[47] & 0x10:  # a SYN: client -> server
                    key = (d[26:30], d[30:34])
                    pairs[key] = pairs.get(key, 0) + 1
    client, server = max(pairs, key=pairs.__getitem__) if pairs else (b"\0" * 4, b"\0" * 4)
    return {"packets": n, "first_ns": first or 0, "last_ns": last,
            "client": str(ipaddress.ip_address(client)),
            "server": str(ipaddress.ip_address(server))}


def retime(path: str, facts: dict[str, Any], out: str) -> str:
    """The capture itself when it lies within the last two hours, else a copy moved to end
    a minute ago (``editcap -t``): ``--from -3h --to now`` is the command under test."""
    now = time.time_ns()
    if now - 2 * 3600 * S < facts["first_ns"] and facts["last_ns"] < now:
        return path
    shift = (now - 60 * S - facts["last_ns"]) / S
    subprocess.run(["editcap", "-t", f"{shift:.6f}", path, out], check=True)
    facts["first_ns"] += int(shift * S)
    facts["last_ns"] += int(shift * S)
    return out


def seed_k8s(bootstrap: str, pods: int, facts: dict[str, Any]) -> None:
    """``rawcap.k8s`` with ``pods`` pods and a service per 10 pods, among them the capture's
    client (``load/wrk-0``) and server (``web/nginx-0``, behind ``web/nginx``), all started an
    hour before the capture; fixed names, so repeated runs update the same keys."""
    import anyio
    from aiokafka import AIOKafkaProducer

    start = facts["first_ns"] - 3600 * S
    recs: list[Any] = [
        PodRecord("load", "wrk-0", "uid-wrk-0", node="node-1", ips=(facts["client"],),
                  phase="Running", owner_kind="Job", owner_name="wrk", start_ns=start),
        PodRecord("web", "nginx-0", "uid-nginx-0", node="node-2", ips=(facts["server"],),
                  phase="Running", owner_kind="ReplicaSet", owner_name="nginx-5d8f", start_ns=start),
        ServiceRecord("web", "nginx", "svc-nginx", cluster_ips=("10.96.0.80",), start_ns=start),
    ]
    for i in range(pods - 2):
        ns = f"ns-{i % 50}"
        recs.append(PodRecord(ns, f"app{i % 100}-5d8f7c9b4-{i:06d}", f"uid-bench-{i}",
                              node=f"node-{i % 100}",
                              ips=(f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}",),
                              phase="Running", owner_kind="ReplicaSet",
                              owner_name=f"app{i % 100}-5d8f7c9b4", start_ns=start))
    for s in range(max(0, pods // 10 - 1)):
        recs.append(ServiceRecord(f"ns-{s % 50}", f"app{s}", f"svc-bench-{s}",
                                  cluster_ips=(f"10.96.{1 + s // 256}.{s % 256}",), start_ns=start))

    async def produce() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        await p.start()
        try:
            futs = [await p.send("rawcap.k8s", encode_k8s(r), key=r.key.encode(),
                                 timestamp_ms=start // 1_000_000) for r in recs]
            for f in futs:
                await f
        finally:
            await p.stop()

    anyio.run(produce)


def populate_store(db: str, calls: int, hosts: int) -> tuple[int, int, str]:
    """A store of ``calls`` HTTP/1 calls over the last hour between ``hosts`` clients and
    ``hosts // 10`` servers, written through the store's own API; returns a 5-minute window
    in its middle and one server address to query."""
    from dissector._store import CallStore
    from schemas.calls import Call

    rng = random.Random(7)
    t0 = time.time_ns() - 3600 * S
    step = 3600 * S // calls
    servers = max(1, hosts // 10)
    with CallStore(db, 2 << 30) as st:
        batch: list[Call] = []
        for i in range(calls):
            ts = t0 + i * step
            batch.append(Call(
                "http1", node="node-1", src_ip=f"10.1.{rng.randrange(hosts) // 256}.{i % 256}",
                src_port=30000 + i % 30000, dst_ip=f"10.2.0.{rng.randrange(servers)}",
                dst_port=80, req_ts_ns=ts, resp_ts_ns=ts + 800_000, latency_ns=800_000,
                method="GET", path=f"/api/v1/items/{i % 977}", host="api", status=200,
                req_bytes=120, resp_bytes=640, req_headers=(("Host", "api"), ("User-Agent", "k6")),
                resp_headers=(("Content-Type", "application/json"), ("Content-Length", "512"))))
            if len(batch) == 5000:
                st.add(batch)
                batch = []
        st.add(batch)
    mid = t0 + 1800 * S
    return mid, mid + 300 * S, "10.2.0.3"

