"""The compiled export hot path: a whole in-window batch straight to pcapng EPBs.

:func:`fast_batch` stands in for ``_PcapngSink.batch`` when :data:`rawcap.pcap._convert.FAST` (the C
extension is built and the test hook ``no-fastpcap`` is off) and no EPB gets options (no
``--comment-node``, no per-packet comments). It produces the same bytes as the Python sink:
interfaces are registered through the sink (same ids, same IDBs, at the same place in the
stream), and the whole batch comes back as one ``bytes`` object. :func:`fast_zstd_batch`
does the same from the batch body still compressed (:func:`rawcap.pcap._convert.epbs_zstd`), or
returns None for the caller to decompress first.
"""

from __future__ import annotations

from typing import Any, Protocol

from rawcap.pcap._convert import FAST, FAST_ZSTD, Resolve, epbs, epbs_zstd
from schemas import BatchHeader

__all__ = ("FAST", "FAST_ZSTD", "fast_batch", "fast_zstd_batch")

#: Every timestamp: a RawBatch lies wholly inside the window, so nothing is trimmed.
_ALL = (0, 2**64)


class _Sink(Protocol):
    ids: dict[tuple[str, int | str], tuple[int, bytes]]

    def _iface(self, node: str, key: int | str, name: str, parts: list[Any]) -> tuple[int, bytes]: ...


def _resolver(sink: _Sink, h: BatchHeader) -> Resolve:
    """``ifindex -> (id, IDB bytes)`` through the sink (its ids, its IDBs); the C converter
    puts the IDB bytes into its output right before the interface's first EPB."""
    node, ids, ifaces = h.node, sink.ids, h.ifaces

    def resolve(ifindex: int) -> tuple[int, bytes]:
        ent = ids.get((node, ifindex))
        if ent is not None:
            return ent[0], b""
        idb: list[Any] = []
        ent = sink._iface(node, ifindex, ifaces.get(ifindex, str(ifindex)), idb)
        return ent[0], b"".join(idb)

    return resolve


def fast_batch(
    sink: _Sink, h: BatchHeader, body: bytes | memoryview, parts: list[Any]
) -> tuple[int, int, int]:
    """Append the EPBs of a whole batch to ``parts``; returns (packets, packet bytes, output
    bytes). Raises a :class:`schemas.errors.BatchError` for a corrupt body (nothing added)."""
    out, n, nbytes = epbs(h, body, _ALL[0], _ALL[1], _resolver(sink, h))
    parts.append(out)
    return n, nbytes, len(out)


def fast_zstd_batch(
    sink: _Sink, h: BatchHeader, frame: bytes | memoryview, parts: list[Any]
) -> tuple[int, int, int] | None:
    """:func:`fast_batch` of the compressed body; None (nothing added, no interface
    registered) when the caller must decompress it first."""
    res = epbs_zstd(h, frame, _ALL[0], _ALL[1], _resolver(sink, h))
    if res is None:
        return None
    out, n, nbytes = res
    parts.append(out)
    return n, nbytes, len(out)
