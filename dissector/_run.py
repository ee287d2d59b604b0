"""Driving a ``Dissector`` from a pcap file, and where its calls go (stdout, store, Kafka).

Shared by ``rawcap dissect --pcap`` and the Kafka consumer so that a replay from Kafka and a
dissection of the exported pcap produce the same calls.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

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
from schemas.calls import Call
from schemas.errors import ConfigError

from ._engine import Dissector
from ._names import CallNamer
from ._rows import row as call_row
from ._store import CallStore, StoreWriter
from ._text import format_call, lines

if TYPE_CHECKING:
    from rawcap.workloads import Workloads

__all__ = ("CallOutput", "Flushed", "db_path", "dissect_pcap",
           "dissector_from_config", "format_call")


def db_path(cfg: Config, override: str | None = None) -> Path:
    return Path(override or cfg.get("dissector.dbPath") or ".rawcap/calls.db")


def dissector_from_config(cfg: Config, emit: Callable[[Call], None], *,
                          redact: bool = True) -> Dissector:
    return Dissector(emit, node=cfg.node, max_flows=cfg.get("dissector.maxFlows"),
                     max_flow_bytes=cfg.get("dissector.maxFlowBytes"),
                     max_body=cfg.get("dissector.maxBodyBytes"),
                     redact_headers=cfg.get("dissector.redactHeaders"), redact=redact)


class Flushed(NamedTuple):
    """What one :meth:`CallOutput.flush` let go: the calls and, when they are stored or
    published, their ``rawcap.calls`` rows (``schemas.calls.call_rows``: encoded once for
    both)."""

    calls: list[Call]
    records: list[bytes] | None


class CallOutput:
    """Collects calls: names their workloads (when ``workloads`` is given), prints them (text
    or JSON lines, written once per batch), encodes each once (``schemas.calls.call_rows``),
    and hands each batch to the store (one block, written by a :class:`StoreWriter` thread)
    and to the caller (to publish).

    ``publish``: every flush (also those that ``batch`` triggers) is kept for the caller to
    publish (:meth:`take`); :meth:`sync` waits until what was flushed is stored;
    ``close()`` flushes, stores and closes the store.
    """

    def __init__(self, *, store: CallStore | None = None, out: TextIO | None = None,
                 as_json: bool = False, batch: int = 2000,
                 workloads: Workloads | None = None, publish: bool = False) -> None:
        #: ``rawcap.k8s`` as loaded (range, pcap) or being followed (live); None: no names
        self.workloads = workloads
        self.names = CallNamer(workloads) if workloads is not None else None
        self.store = None if store is None else StoreWriter(store)
        self.out = out
        self.as_json = as_json
        self.batch = batch
        self.publish = publish
        self.encode = publish or store is not None
        self.unpublished: list[Flushed] = []
        self.buf: list[Call] = []
        self.rows: list[bytes] = []  # of buf's calls, when encoded
        self.count = 0
        self.extra: list[Callable[[list[Call]], Any]] = []

    def __call__(self, call: Call) -> None:
        self.count += 1
        wl = self.names
        if wl is not None and wl.wl.records:
            # as of the request (else response) time; the call is fresh from the dissector
            # and owned by us, so it is filled in place (a with_() copy costs ~6 us per call)
            (call.src_workload, call.src_namespace, call.dst_workload,
             call.dst_namespace) = wl(call.src_ip, call.dst_ip, call.req_ts_ns or call.resp_ts_ns)
        buf = self.buf
        buf.append(call)
        if self.encode:
            # packed now, while its values (headers above all) are in the CPU's caches: at the
            # flush, a pass over a few thousand calls reads them from memory again
            self.rows.append(call_row(call))
        if len(buf) >= self.batch:
            self.flush()

    def _print(self, calls: list[Call]) -> None:
        out = self.out
        if out is None or not calls:
            return
        if self.as_json:
            dumps = json.dumps
            out.write("".join([dumps(c.as_dict(), default=str) + "\n" for c in calls]))
        else:
            out.write(lines(calls))

    def flush(self) -> Flushed:
        buf, self.buf = self.buf, []
        records: list[bytes] | None
        records, self.rows = self.rows, []
        self._print(buf)
        if not (buf and self.encode):
            records = None
        if buf and self.store is not None:
            self.store.add(buf, records)
        for f in self.extra:
            f(buf)
        flushed = Flushed(buf, records)
        if buf and self.publish:
            self.unpublished.append(flushed)
        return flushed

    def take(self) -> list[Flushed]:
        """What was flushed since the last call, for the caller to publish (``publish``)."""
        if self.buf:
            self.flush()
        out, self.unpublished = self.unpublished, []
        return out

    def sync(self) -> None:
        """Wait until every call flushed so far is in the store."""
        if self.store is not None:
            self.store.sync()

    def close(self) -> None:
        """Flush, store and close the store; idempotent."""
        if self.buf:
            self.flush()
        if self.store is not None:
            store, self.store = self.store, None
            store.close()


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
