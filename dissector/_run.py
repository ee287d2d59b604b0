"""Driving a ``Dissector`` from a pcap file, and where its calls go (stdout, store, Kafka).

Shared by ``rawcap dissect --pcap`` and the Kafka consumer so that a replay from Kafka and a
dissection of the exported pcap produce the same calls.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rawcap.config import Config
from rawcap.pcap import (
    LINKTYPE_ETHERNET,
    PCAP_HEADER,
    PCAP_HEADER_FIELDS,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    TruncatedCapture,
    layout,
    read_capture,
)
from rawcap.timeparse import format_ns
from schemas.calls import Call
from schemas.errors import ConfigError

from ._engine import Dissector
from ._store import CallStore

if TYPE_CHECKING:
    from rawcap.workloads import Workloads

__all__ = ("CallOutput", "db_path", "dissect_pcap", "dissector_from_config", "format_call")


def db_path(cfg: Config, override: str | None = None) -> Path:
    return Path(override or cfg.get("dissector.dbPath") or ".rawcap/calls.db")


def dissector_from_config(cfg: Config, emit: Callable[[Call], None], *,
                          redact: bool = True) -> Dissector:
    return Dissector(emit, node=cfg.node, max_flows=cfg.get("dissector.maxFlows"),
                     max_flow_bytes=cfg.get("dissector.maxFlowBytes"),
                     max_body=cfg.get("dissector.maxBodyBytes"),
                     redact_headers=cfg.get("dissector.redactHeaders"), redact=redact)


def _end(ip: str, port: int, workload: str, namespace: str) -> str:
    """``10.1.0.5:40000``, with the workload when known: ``10.1.0.5:40000 (shop/web-1)``,
    ``10.96.0.6:80 (shop/service/api)``, ``10.0.0.1:10250 (node/n1)``."""
    if not workload:
        return f"{ip}:{port}"
    return f"{ip}:{port} ({namespace}/{workload})" if namespace else f"{ip}:{port} ({workload})"


def format_call(c: Call) -> str:
    lat = f"{c.latency_ns / 1e6:.3f}ms" if c.latency_ns else "-"
    flag = "" if c.complete else f"  [incomplete: {c.error}]"
    return (f"{format_ns(c.ts_ns) if c.ts_ns else '-'} {c.proto:5} "
            f"{_end(c.src_ip, c.src_port, c.src_workload, c.src_namespace)} > "
            f"{_end(c.dst_ip, c.dst_port, c.dst_workload, c.dst_namespace)} "
            f"{c.summary()} {lat}{flag}")


class CallOutput:
    """Collects calls: names their workloads (when ``workloads`` is given), prints them (text
    or JSON lines), writes the store in batches."""

    def __init__(self, *, store: CallStore | None = None, out: TextIO | None = None,
                 as_json: bool = False, batch: int = 2000,
                 workloads: Workloads | None = None) -> None:
        #: ``rawcap.k8s`` as loaded (range, pcap) or being followed (live); None: no names
        self.workloads = workloads
        self.store = store
        self.out = out
        self.as_json = as_json
        self.batch = batch
        self.buf: list[Call] = []
        self.count = 0
        self.extra: list[Callable[[list[Call]], Any]] = []

    def __call__(self, call: Call) -> None:
        self.count += 1
        wl = self.workloads
        if wl is not None and wl.records:
            # as of the request (else response) time; the call is fresh from the dissector
            # and owned by us, so it is filled in place (a with_() copy costs ~6 us per call)
            (call.src_workload, call.src_namespace, call.dst_workload,
             call.dst_namespace) = wl.call_names(call.src_ip, call.dst_ip, call.ts_ns)
        if self.out is not None:
            if self.as_json:
                self.out.write(json.dumps(call.as_dict(), default=str) + "\n")
            else:
                self.out.write(format_call(call) + "\n")
        self.buf.append(call)
        if len(self.buf) >= self.batch:
            self.flush()

    def flush(self) -> list[Call]:
        buf, self.buf = self.buf, []
        if buf and self.store is not None:
            self.store.add(buf)
        for f in self.extra:
            f(buf)
        return buf


def dissect_pcap(path: str | Path, dissector: Dissector) -> int:
    """Feed every Ethernet frame of a pcap/pcapng file; return the number of frames."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--pcap {path}: no such file")
    pkt = dissector.packet
    n = 0
    classic = _classic_pcap(p)
    if classic is not None:
        mm, big, mul = classic
        try:
            n, end = dissector.run_pcap_records(mm, PCAP_HEADER.size, big, mul)
            size = len(mm)
        finally:
            mm.close()
        dissector.finish()
        if end != size:
            raise TruncatedCapture(f"{path}: truncated at byte {end} of {size} (the {n} "
                                   "packets before it were dissected)")
        return n
    try:
        with p.open("rb") as fh:
            for recs in read_capture(fh, name=str(path), chunk=8 << 20):
                for r in recs:
                    if r.linktype == LINKTYPE_ETHERNET:
                        pkt(r.ts_ns, r.data)
                n += len(recs)
    finally:
        dissector.finish()  # a truncated file: what came before still becomes calls
    return n


def stderr_stats(d: Dissector) -> None:
    print(json.dumps({"dissector": d.stats()}), file=sys.stderr)


#: The magic's bytes in either byte order -> (byte order, ns per timestamp fraction unit).
_PCAP_MAGIC = {magic.to_bytes(4, order): ("<" if order == "little" else ">", mul)
               for magic, mul in ((PCAP_MAGIC_US, 1000), (PCAP_MAGIC_NS, 1))
               for order in ("little", "big")}


def _classic_pcap(path: Path) -> tuple[Any, bool, int] | None:
    """mmap a classic Ethernet pcap (the common case) for the record walker; ``None`` for
    anything else (``rawcap.pcap`` reads those, pcapng included)."""
    import mmap

    with open(path, "rb") as fh:
        head = fh.read(PCAP_HEADER.size)
        if len(head) < PCAP_HEADER.size or head[:4] not in _PCAP_MAGIC:
            return None
        endian, mul = _PCAP_MAGIC[head[:4]]
        linktype = layout(PCAP_HEADER_FIELDS, endian).unpack(head)[-1] & 0x0FFFFFFF
        if linktype != LINKTYPE_ETHERNET:
            return None
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return mm, endian == ">", mul
