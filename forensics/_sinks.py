"""The export's sinks: a window's items (whole batches, packet lists) as pcapng or pcap
blocks, appended to a list of parts for one large write.

:class:`PcapngSink` builds one EPB per packet with the layouts of :mod:`rawcap.pcap`: a
whole ``rec`` batch with one ``pack`` per packet (the previous EPB's padding and trailing
length fused with this one's header) and the packet bytes by reference, a whole batch through
the C converter when it is built (``_fastexport.py``), anything else packet by packet.
Interfaces get an IDB before their first packet, ``node:iface`` named. :class:`PcapSink`
writes classic pcap (one link type, no interface names). Golden vectors
(``tests/forensics/test_export_vectors.py``) hold every path to the same bytes.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from rawcap.pcap import (
    EPB,
    EPB_JOIN,
    EPB_TRAIL,
    EPB_TYPE,
    LINKTYPE_ETHERNET,
    PAD,
    PCAP_RECORD,
    U32,
    PcapngWriter,
    PcapWriter,
    comment_options,
    epb_length,
)
from rawcap.window import WPacket
from schemas import BODY_RECORDS, REC_HEADER, REC_HEADER_SPLIT, BatchHeader, iter_packets
from schemas.errors import RecordOverrun

from ._fastexport import FAST as _FAST
from ._fastexport import FAST_ZSTD as _FAST_ZSTD
from ._fastexport import fast_batch, fast_zstd_batch

if TYPE_CHECKING:
    from rawcap.workloads import Workloads

__all__ = ("PcapSink", "PcapngSink")

#: Padding + block length of the previous EPB, then this EPB's header, in one pack; the last
#: one: nothing before this EPB (it follows an IDB).
_JOIN_PACK = (*(j.pack for j in EPB_JOIN), lambda _prev_blen, *hdr: EPB.pack(*hdr))
_EPB_FIXED = epb_length(0)


class PcapngSink:
    """EPBs straight from batch bodies: one struct pack per packet, data by reference."""

    def __init__(self, snaplen: int, comment_node: bool, workloads: Workloads | None = None) -> None:
        self.w = PcapngWriter(snaplen=snaplen)
        self.comment_node = comment_node
        self.wl = workloads  # per-packet workload comments (the per-packet path)
        # (node, ifindex) -> (interface id, options bytes); names resolved once per interface.
        self.ids: dict[tuple[str, int | str], tuple[int, bytes]] = {}
        self._added: list[tuple[tuple[str, int | str], str]] = []  # in the current batch

    def begin_batch(self) -> None:
        self._added.clear()

    def forget_batch(self) -> None:
        """Undo the interfaces the failed batch described (their IDBs were dropped with it)."""
        for key, name in reversed(self._added):
            del self.ids[key]
            self.w.forget_interface(name, LINKTYPE_ETHERNET)
        self._added.clear()

    def header(self) -> bytes:
        return self.w.header()

    def _iface(self, node: str, key: int | str, name: str, parts: list[Any]) -> tuple[int, bytes]:
        idx, idb = self.w.interface(f"{node}:{name}", LINKTYPE_ETHERNET)
        parts.append(idb)
        if idb:
            self._added.append(((node, key), f"{node}:{name}"))
        opts = comment_options(f"node={node}".encode()) if self.comment_node else b""
        ent = self.ids[(node, key)] = (idx, opts)
        return ent

    def compressed_batch(
        self, h: BatchHeader, frame: bytes | memoryview, parts: list[Any]
    ) -> tuple[int, int, int] | None:
        """:meth:`batch` of a body still compressed, when the C converter can inflate it
        itself (forensics/_fastexport.py); None: decompress it and call :meth:`batch`."""
        if _FAST_ZSTD and not self.comment_node and self.wl is None:
            return fast_zstd_batch(self, h, frame, parts)
        return None

    def batch(self, h: BatchHeader, body: bytes | memoryview, parts: list[Any]) -> tuple[int, int, int]:
        """Append the EPBs of a whole batch; returns (packets, packet bytes, output bytes)."""
        node, ids, ifaces = h.node, self.ids, h.ifaces
        add, pack, u32 = parts.append, EPB.pack, U32.pack
        nbytes = out = 0
        if _FAST and not self.comment_node and self.wl is None:
            return fast_batch(self, h, body, parts)  # the C twin (forensics/_fastexport.py)
        if h.body == BODY_RECORDS and not self.comment_node and self.wl is None:
            return self._records(h, body, parts)
        wl = self.wl
        n = 0
        for p in iter_packets(h, body):
            ent = ids.get((node, p.ifindex)) or self._iface(
                node, p.ifindex, ifaces.get(p.ifindex, str(p.ifindex)), parts
            )
            idx, opts = ent
            caplen, ts = p.caplen, p.ts_ns
            if wl is not None:
                opts = _workload_opts(wl, node, p.data, ts)
            blen = epb_length(caplen, len(opts))
            add(pack(EPB_TYPE, blen, idx, ts >> 32, ts & 0xFFFFFFFF, caplen, p.origlen))
            add(p.data)
            add(PAD[-caplen & 3] + opts + u32(blen))
            nbytes += caplen
            out += blen
            n += 1
        return n, nbytes, out

    def _records(self, h: BatchHeader, body: bytes | memoryview, parts: list[Any]) -> tuple[int, int, int]:
        """The hot path: a ``rec`` body to EPBs with one ``pack`` per packet (the previous
        EPB's padding and trailing length fused with this one's header) and the packet bytes
        by reference. Bounds are checked once: a record that overruns makes ``unpack_from``
        fail or leaves ``pos`` past the end."""
        count = h.count
        if count == 0:
            return 0, 0, 0
        node, ids, ifaces = h.node, self.ids, h.ifaces
        add, packs = parts.append, _JOIN_PACK
        view = memoryview(body)
        end, unpack, hsize, fixed = len(view), REC_HEADER_SPLIT.unpack_from, REC_HEADER.size, _EPB_FIXED
        try:
            ts_lo, ts_hi, caplen, origlen, ifindex = unpack(view, 0)
            cur_if = ifindex
            ent = ids.get((node, ifindex)) or self._iface(
                node, ifindex, ifaces.get(ifindex, str(ifindex)), parts
            )
            idx = ent[0]
            prev_pad = -caplen & 3
            prev_blen = fixed + caplen + prev_pad
            add(EPB.pack(EPB_TYPE, prev_blen, idx, ts_hi, ts_lo, caplen, origlen))
            pos = hsize + caplen
            add(view[hsize:pos])
            for _ in range(count - 1):
                ts_lo, ts_hi, caplen, origlen, ifindex = unpack(view, pos)
                if ifindex != cur_if:
                    got = ids.get((node, ifindex))
                    if got is None:
                        # A new interface: its IDB goes after the previous EPB's trailer,
                        # and the next pack has no trailer left to fuse (_JOIN_PACK[4]).
                        add(EPB_TRAIL[prev_pad].pack(prev_blen))
                        got = self._iface(node, ifindex, ifaces.get(ifindex, str(ifindex)), parts)
                        prev_pad = 4
                    idx, cur_if = got[0], ifindex
                pad = -caplen & 3
                blen = fixed + caplen + pad
                add(packs[prev_pad](prev_blen, EPB_TYPE, blen, idx, ts_hi, ts_lo, caplen, origlen))
                pos += hsize
                stop = pos + caplen
                add(view[pos:stop])
                prev_pad, prev_blen, pos = pad, blen, stop
        except struct.error:
            raise RecordOverrun("a record header runs past the end of the body") from None
        if pos != end:
            raise RecordOverrun(f"records end at byte {pos} of a {end}-byte body ({count} records)")
        add(EPB_TRAIL[prev_pad].pack(prev_blen))
        nbytes = end - hsize * count
        # Output bytes for the flush size: packet bytes, EPB overhead, at most 4 of padding.
        return count, nbytes, nbytes + (fixed + 4) * count

    def packets(self, chunk: list[WPacket], parts: list[Any]) -> int:
        ids, add, pack, u32 = self.ids, parts.append, EPB.pack, U32.pack
        wl = self.wl
        out = 0
        for p in chunk:
            ent = ids.get((p.node, p.iface)) or self._iface(p.node, p.iface, p.iface, parts)
            idx, opts = ent
            caplen, ts = p.caplen, p.ts_ns
            if wl is not None:
                opts = _workload_opts(wl, p.node, p.data, ts)
            blen = epb_length(caplen, len(opts))
            add(pack(EPB_TYPE, blen, idx, ts >> 32, ts & 0xFFFFFFFF, caplen, p.origlen))
            add(p.data)
            add(PAD[-caplen & 3] + opts + u32(blen))
            out += blen
        return out


def _workload_opts(wl: Workloads, node: str, data: bytes | memoryview, ts_ns: int) -> bytes:
    """EPB options: one ``opt_comment`` ``node=N src=LABEL dst=LABEL`` (``node=N`` alone when
    neither end is known at ``ts_ns``), then ``opt_endofopt``."""
    ends = wl.comment(data, ts_ns)
    return comment_options(f"node={node}".encode() + (b" " + ends if ends else b""))


class PcapSink:
    """Classic pcap, nanosecond magic: one link type, no interface names."""

    def __init__(self, snaplen: int) -> None:
        self.w = PcapWriter(snaplen=snaplen)

    def begin_batch(self) -> None:
        pass  # classic pcap has no interface blocks to undo

    def forget_batch(self) -> None:
        pass

    def header(self) -> bytes:
        return self.w.header()

    def compressed_batch(self, h: BatchHeader, frame: bytes | memoryview, parts: list[Any]) -> None:
        return None  # decompressed first (no compiled path for classic pcap)

    def batch(self, h: BatchHeader, body: bytes | memoryview, parts: list[Any]) -> tuple[int, int, int]:
        add, pack = parts.append, PCAP_RECORD.pack
        n = nbytes = 0
        for p in iter_packets(h, body):
            sec, ns = divmod(p.ts_ns, 1_000_000_000)
            add(pack(sec, ns, p.caplen, p.origlen))
            add(p.data)
            nbytes += p.caplen
            n += 1
        return n, nbytes, nbytes + PCAP_RECORD.size * n

    def packets(self, chunk: list[WPacket], parts: list[Any]) -> int:
        add, pack = parts.append, PCAP_RECORD.pack
        out = 0
        for p in chunk:
            sec, ns = divmod(p.ts_ns, 1_000_000_000)
            add(pack(sec, ns, p.caplen, p.origlen))
            add(p.data)
            out += PCAP_RECORD.size + p.caplen
        return out
