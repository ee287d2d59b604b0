"""``rawcap pcap export``: a time window as pcapng (or classic pcap), in time order.

The writer works a chunk of packets at a time: one EPB header ``pack`` per packet, the
packet's bytes referenced (not copied) until ``writelines`` hands the whole chunk to the
file in one call. Output goes to a temporary name beside the target and is renamed on
success, so a reader never sees a half-written file under the real name; ``-o -`` streams
to stdout for ``| tshark -r -``.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from rawcap.pcapfile import LINKTYPE_ETHERNET, PcapngWriter, PcapWriter
from rawcap.window import RawBatch, WindowReader, WPacket
from schemas import BODY_RECORDS, BatchHeader, iter_packets
from schemas.errors import BatchError, ConfigError, RecordOverrun

__all__ = ("OutputFile", "write_capture")

_EPB = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")
_REC = struct.Struct("<IIII")
#: A ``rec`` record header read as (ts low, ts high, caplen, origlen, ifindex): the u64
#: timestamp's halves come out in the order an EPB does not want, but without a shift.
_REC_SPLIT = struct.Struct("<IIIIi4x")
#: Padding + block length of the previous EPB, then this EPB's header, in one pack.
_JOIN = tuple(struct.Struct(f"<{pad}xIIIIIIII") for pad in range(4))
_TRAIL = tuple(struct.Struct(f"<{pad}xI") for pad in range(4))
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")
_FLUSH_BYTES = 4 * 1024 * 1024


class OutputFile:
    """``-o FILE`` (temp name + rename on success) or ``-o -`` (stdout)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._tmp: str | None = None
        self.fh: BinaryIO
        if target == "-":
            self.fh = sys.stdout.buffer
            return
        path = Path(target)
        parent = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise ConfigError(f"output path {target} is a directory")
        if not parent.is_dir():
            raise ConfigError(f"output path {target}: directory {parent} does not exist")
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
        except OSError as exc:
            raise ConfigError(f"output path {target} is not writable: {exc.strerror}") from None
        self.fh = os.fdopen(fd, "wb")

    def commit(self) -> None:
        if self._tmp is None:
            self.fh.flush()
            return
        self.fh.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.target)
        self._tmp = None

    def abort(self) -> None:
        if self._tmp is not None:
            self.fh.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None


async def write_capture(
    reader: WindowReader,
    out: BinaryIO,
    *,
    fmt: str = "pcapng",
    comment_node: bool = False,
    match: Callable[[bytes | memoryview, int], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    snaplen: int = 262144,
) -> int:
    """Stream the reader's packets into ``out``; returns the number of packets written."""
    sink = _PcapSink(snaplen) if fmt == "pcap" else _PcapngSink(snaplen, comment_node)
    parts: list[Any] = [sink.header()]
    size = len(parts[0])
    total = 0
    async for item in reader.items(match=match):
        if isinstance(item, RawBatch):
            h = item.header
            mark = len(parts)
            try:
                n, nbytes, added = sink.batch(h, item.body, parts)
            except BatchError as exc:
                del parts[mark:]
                await reader.corrupt_batch(h, exc)
                continue
            reader.stats.node(h.node).bytes += nbytes
            last_ts = h.last_ns
        else:
            if not item:
                continue
            n, added = len(item), sink.packets(item, parts)
            last_ts = item[-1].ts_ns
        total += n
        size += added
        if size >= _FLUSH_BYTES:
            out.write(b"".join(parts))
            parts, size = [], 0
        if progress is not None:
            progress(total, last_ts)
    out.write(b"".join(parts))
    return total


class _PcapngSink:
    """EPBs straight from batch bodies: one struct pack per packet, data by reference."""

    def __init__(self, snaplen: int, comment_node: bool) -> None:
        self.w = PcapngWriter(snaplen=snaplen)
        self.comment_node = comment_node
        # (node, ifindex) -> (interface id, options bytes); names resolved once per interface.
        self.ids: dict[tuple[str, int | str], tuple[int, bytes]] = {}

    def header(self) -> bytes:
        return self.w.header()

    def _iface(self, node: str, key: int | str, name: str, parts: list[Any]) -> tuple[int, bytes]:
        idx, idb = self.w.interface(f"{node}:{name}", LINKTYPE_ETHERNET)
        parts.append(idb)
        opts = b""
        if self.comment_node:
            c = f"node={node}".encode()
            opts = struct.pack("<HH", 1, len(c)) + c + b"\0" * (-len(c) % 4) + b"\0\0\0\0"
        ent = self.ids[(node, key)] = (idx, opts)
        return ent

    def batch(self, h: BatchHeader, body: bytes | memoryview, parts: list[Any]) -> tuple[int, int, int]:
        """Append the EPBs of a whole batch; returns (packets, packet bytes, output bytes)."""
        node, ids, ifaces = h.node, self.ids, h.ifaces
        add, pack, pads = parts.append, _EPB.pack, _PAD
        nbytes = out = 0
        if h.body == BODY_RECORDS and not self.comment_node:
            return self._records(h, body, parts)
        n = 0
        for p in iter_packets(h, body):
            ent = ids.get((node, p.ifindex)) or self._iface(
                node, p.ifindex, ifaces.get(p.ifindex, str(p.ifindex)), parts
            )
            idx, opts = ent
            caplen, ts = p.caplen, p.ts_ns
            pad = -caplen & 3
            blen = 32 + caplen + pad + len(opts)
            add(pack(6, blen, idx, ts >> 32, ts & 0xFFFFFFFF, caplen, p.origlen))
            add(p.data)
            add(pads[pad] + opts + _U32.pack(blen))
            nbytes += caplen
            out += blen
            n += 1
        return n, nbytes, out

    def _records(self, h: BatchHeader, body: bytes | memoryview, parts: list[Any]) -> tuple[int, int, int]:
        """The hot path: a ``rec`` body to EPBs with one ``pack`` per packet (the previous
        EPB's padding and trailing length fused with this one's header) and the packet bytes
        by reference."""
        node, ids, ifaces = h.node, self.ids, h.ifaces
        add, first, joins = parts.append, _EPB.pack, _JOIN
        view = memoryview(body)
        pos, end, unpack = 0, len(view), _REC_SPLIT.unpack_from
        cur_if, idx = None, 0
        prev_pad, prev_blen = 0, 0
        nbytes = out = 0
        for _ in range(h.count):
            if pos + 24 > end:
                raise RecordOverrun("record header runs past the end of the body")
            ts_lo, ts_hi, caplen, origlen, ifindex = unpack(view, pos)
            pos += 24
            stop = pos + caplen
            if stop > end:
                raise RecordOverrun(f"record of {caplen} bytes runs past the end of the body")
            if ifindex != cur_if:
                ent = ids.get((node, ifindex)) or self._iface(
                    node, ifindex, ifaces.get(ifindex, str(ifindex)), parts
                )
                idx, cur_if = ent[0], ifindex
            pad = -caplen & 3
            blen = 32 + caplen + pad
            if prev_blen:
                add(joins[prev_pad].pack(prev_blen, 6, blen, idx, ts_hi, ts_lo, caplen, origlen))
            else:
                add(first(6, blen, idx, ts_hi, ts_lo, caplen, origlen))
            add(view[pos:stop])
            prev_pad, prev_blen = pad, blen
            pos = stop
            nbytes += caplen
            out += blen
        if pos != end:
            raise RecordOverrun(f"{end - pos} bytes left after the last of {h.count} records")
        if prev_blen:
            add(_TRAIL[prev_pad].pack(prev_blen))
        return h.count, nbytes, out

    def packets(self, chunk: list[WPacket], parts: list[Any]) -> int:
        ids, add, pack, pads = self.ids, parts.append, _EPB.pack, _PAD
        out = 0
        for p in chunk:
            ent = ids.get((p.node, p.iface)) or self._iface(p.node, p.iface, p.iface, parts)
            idx, opts = ent
            caplen, ts = p.caplen, p.ts_ns
            pad = -caplen & 3
            blen = 32 + caplen + pad + len(opts)
            add(pack(6, blen, idx, ts >> 32, ts & 0xFFFFFFFF, caplen, p.origlen))
            add(p.data)
            add(pads[pad] + opts + _U32.pack(blen))
            out += blen
        return out


class _PcapSink:
    """Classic pcap, nanosecond magic: one link type, no interface names."""

    def __init__(self, snaplen: int) -> None:
        self.w = PcapWriter(snaplen=snaplen)

    def header(self) -> bytes:
        return self.w.header()

    def batch(self, h: BatchHeader, body: bytes | memoryview, parts: list[Any]) -> tuple[int, int, int]:
        add, pack = parts.append, _REC.pack
        n = nbytes = 0
        for p in iter_packets(h, body):
            sec, ns = divmod(p.ts_ns, 1_000_000_000)
            add(pack(sec, ns, p.caplen, p.origlen))
            add(p.data)
            nbytes += p.caplen
            n += 1
        return n, nbytes, nbytes + 16 * n

    def packets(self, chunk: list[WPacket], parts: list[Any]) -> int:
        add, pack = parts.append, _REC.pack
        out = 0
        for p in chunk:
            sec, ns = divmod(p.ts_ns, 1_000_000_000)
            add(pack(sec, ns, p.caplen, p.origlen))
            add(p.data)
            out += 16 + p.caplen
        return out
