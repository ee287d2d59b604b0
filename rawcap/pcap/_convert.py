"""Batch body -> pcapng Enhanced Packet Blocks: pure-Python reference and compiled twin.

:func:`epbs_py` is the reference (and the fallback): it walks a decompressed batch body with
the schema decoder (:func:`schemas.iter_packets`: both layouts, VLAN re-insertion, every
bound checked), keeps the packets with ``lo <= ts < hi`` and builds their EPBs exactly as
:class:`rawcap.pcap.PcapngWriter` lays them out (``if_tsresol`` = 9, no options).
:func:`epbs_c` does the same in C (``rawcap/pcap/_fastpcap.c``), without the GIL and without one
Python object per packet. :data:`epbs` is the C version when the extension imports and
the test hook ``no-fastpcap`` is off, else the reference; :data:`FAST` says which.
:func:`epbs_zstd` takes the body still compressed and inflates it inside the C call (into a
reused, cache-resident buffer, not a fresh Python ``bytes``) when a libzstd of the release
python-zstandard runs loads (:func:`_bind_zstd`) and ``no-fastzstd`` is off
(:data:`FAST_ZSTD`); it returns None for anything it leaves
to :func:`schemas.decompress_body` followed by :data:`epbs`, so that a body is accepted or
rejected, with the same reason, exactly as on that path.

``resolve(ifindex) -> (interface id, IDB bytes)`` is called once per interface and call, on
its first packet in the window; the IDB bytes (``b""`` if the interface is described
already) go into the output right before that packet's EPB. A corrupt body raises
:class:`schemas.errors.RecordOverrun` (or ``CorruptBody`` for an unknown layout) and yields
nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final

from schemas import BODY_RECORDS, BODY_TPACKET3, MAX_BODY_BYTES, BatchHeader, iter_packets
from schemas.errors import CorruptBody, RecordOverrun

from ..hooks import hook
from ._blocks import EPB, EPB_TYPE, PAD, U32, epb_length

__all__ = ("FAST", "FAST_ZSTD", "Resolve", "epbs", "epbs_c", "epbs_py", "epbs_zstd")

#: ``ifindex -> (pcapng interface id, IDB bytes to emit first, b"" if none)``
Resolve = Callable[[int], tuple[int, bytes]]
EpbResult = tuple[bytes, int, int]  # (EPB bytes, packets, packet bytes)

_U64_MAX: Final = 2**64 - 1

_c: Any
try:
    _c = importlib.import_module("rawcap.pcap._fastpcap")
except ImportError:  # not built (a plain checkout without `pip install -e .`)
    _c = None


def epbs_py(header: BatchHeader, body: bytes | memoryview, lo: int, hi: int, resolve: Resolve) -> EpbResult:
    """Reference: the EPBs of the body's packets in ``[lo, hi)``."""
    parts: list[bytes | memoryview] = []
    add, pack, u32 = parts.append, EPB.pack, U32.pack
    ids: dict[int, int] = {}
    n = nbytes = seen = 0
    count = header.count
    for p in iter_packets(header, body):
        seen += 1
        if seen > count:  # fail before the surplus packets cost anything (as the C twin does)
            raise RecordOverrun(f"body holds more than the {count} packets its header announces")
        ts = p.ts_ns
        if ts < lo or ts >= hi:
            continue
        idx = ids.get(p.ifindex)
        if idx is None:
            idx, idb = resolve(p.ifindex)
            ids[p.ifindex] = idx
            if idb:
                add(idb)
        caplen = p.caplen
        if p.origlen > 0xFFFFFFFF:
            raise RecordOverrun(f"packet length {caplen}/{p.origlen} does not fit a pcapng block")
        blen = epb_length(caplen)
        add(pack(EPB_TYPE, blen, idx, ts >> 32, ts & 0xFFFFFFFF, caplen, p.origlen))
        add(p.data)
        add(PAD[-caplen & 3] + u32(blen))
        n += 1
        nbytes += caplen
    return b"".join(parts), n, nbytes


def _c_args(header: BatchHeader, lo: int, hi: int) -> tuple[int, int, int, int, bool]:
    """(layout, count, lo, hi, hi_open) as the C functions take them."""
    if header.body == BODY_RECORDS:
        layout = 0
    elif header.body == BODY_TPACKET3:
        layout = 1
    else:
        raise CorruptBody(f"unknown body layout {header.body!r}")
    # Timestamps are u64: clamp the bounds into that range without changing the result.
    hi_open = hi > _U64_MAX
    lo_c, hi_c = max(lo, 0), min(max(hi, 0), _U64_MAX)
    if lo_c > _U64_MAX or (hi_c <= lo_c and not hi_open):
        lo_c = hi_c = 0
        hi_open = False
    # A count beyond what a body can hold fails the same way at any size.
    count = max(min(header.count, 2**62), -1)
    return layout, count, lo_c, hi_c, hi_open


def epbs_c(header: BatchHeader, body: bytes | memoryview, lo: int, hi: int, resolve: Resolve) -> EpbResult:
    """The compiled twin of :func:`epbs_py` (raises ``RuntimeError`` if it is not built)."""
    if _c is None:
        raise RuntimeError("rawcap.pcap._fastpcap is not built (pip install -e .)")
    layout, count, lo_c, hi_c, hi_open = _c_args(header, lo, hi)
    try:
        out, n, nbytes = _c.epbs(body, layout, count, lo_c, hi_c, hi_open, resolve)
    except _c.Overrun as exc:
        raise RecordOverrun(str(exc)) from None
    return out, n, nbytes


def epbs_zstd(
    header: BatchHeader, frame: bytes | memoryview, lo: int, hi: int, resolve: Resolve
) -> EpbResult | None:
    """:func:`epbs_c` of the body that the zstd ``frame`` inflates to, inflated in the same
    C call; None when this is not for it (no libzstd, another codec or layout, a body that
    does not inflate to ``header.body_len`` bytes as one frame): then decompress first."""
    if not FAST_ZSTD or header.codec != "zstd" or not 0 < header.body_len <= MAX_BODY_BYTES:
        return None
    if header.body not in (BODY_RECORDS, BODY_TPACKET3):
        return None  # the decompression's verdict comes first
    layout, count, lo_c, hi_c, hi_open = _c_args(header, lo, hi)
    try:
        res = _c.epbs_zstd(frame, header.body_len, layout, count, lo_c, hi_c, hi_open, resolve)
    except _c.Overrun as exc:
        raise RecordOverrun(str(exc)) from None
    return None if res is None else (res[0], res[1], res[2])


def _bind_zstd() -> bool:
    """Give the C converter the zstd release that python-zstandard decodes with (the Python
    path, :func:`schemas.decompress_body`): releases differ in what they call corrupt (the
    system's 1.5.4 inflated a frame with a flipped bit, checksum verified, that the bundled
    1.5.7 rejects), and a body must be accepted or rejected the same on both paths. Tried:
    the copy python-zstandard bundles in its cffi backend (which exports the zstd API), then
    the system's ``libzstd.so.1``; neither of that release: no C inflation (the converter still
    runs, after ``decompress_body``)."""
    import importlib.util

    import zstandard

    zstd_open = getattr(_c, "zstd_open", None)
    if zstd_open is None:  # an extension built before zstd_open: no C inflation until rebuilt
        return False

    major, minor, patch = zstandard.ZSTD_VERSION[:3]
    version = major * 10000 + minor * 100 + patch
    paths = []
    try:
        spec = importlib.util.find_spec("zstandard._cffi")  # located, not imported
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        paths.append(spec.origin)
    paths.append("libzstd.so.1")
    return any(zstd_open(path, version) for path in paths)


FAST: Final = _c is not None and not hook("no-fastpcap")
FAST_ZSTD: Final = FAST and not hook("no-fastzstd") and _bind_zstd()
epbs: Final = epbs_c if FAST else epbs_py
