"""Which batches a read uses: window, node and sequence checks on batch headers.

A node's sequence numbers are checked as its batches arrive: a gap is a warning (and is
listed in the node's :class:`NodeStats`), a repeated batch (at-least-once delivery, a
replayed FIFO) is dropped, a lower number means another capture or an import started over.
"""

from __future__ import annotations

import logging

from schemas import BatchHeader

from ..timeparse import format_ns
from ._types import WindowStats

__all__ = ("Admission",)

log = logging.getLogger("rawcap.window")

#: Batches remembered per node to drop repeats.
_RECENT = 4096


class Admission:
    """The checks of one read of ``[lo, hi)`` for ``nodes`` (None: all)."""

    def __init__(self, lo: int, hi: int, nodes: frozenset[str] | None, stats: WindowStats) -> None:
        self.lo, self.hi, self.nodes, self.stats = lo, hi, nodes, stats
        self._last: dict[str, int] = {}  # node -> sequence number of the last batch read
        self._seen: dict[str, dict[tuple[int, int, int], None]] = {}  # recent (seq, t0, n) per node

    def wanted_key(self, key: bytes | None) -> bool:
        """Whether a batch with this Kafka key (the node name) may belong to the selection."""
        if self.nodes is None or not key:
            return True
        return key.decode(errors="replace") in self.nodes

    def admit(self, header: BatchHeader) -> bool:
        """Window, node and sequence checks on a batch header; True to use it."""
        node = header.node
        if self.nodes is not None and node not in self.nodes:
            return False
        in_window = header.count > 0 and header.last_ns >= self.lo and header.first_ns < self.hi
        seen = self._seen.setdefault(node, {})
        key = (header.seq, header.first_ns, header.count)
        if key in seen:
            # The same batch again (at-least-once delivery, a replayed FIFO): drop it.
            if in_window:
                self.stats.node(node).duplicates += 1
            return False
        seen[key] = None
        if len(seen) > _RECENT:
            del seen[next(iter(seen))]
        pseq = self._last.get(node)
        if pseq is not None and in_window:
            if header.seq > pseq + 1:
                self.stats.node(node).gaps.append((pseq + 1, header.seq - 1))
                log.warning(
                    "node %s: sequence gap: batches %d..%d missing (%d), before %s",
                    node,
                    pseq + 1,
                    header.seq - 1,
                    header.seq - pseq - 1,
                    format_ns(header.first_ns),
                )
            elif header.seq <= pseq:
                log.info(
                    "node %s: sequence restarts at %d after %d (another capture or import)",
                    node,
                    header.seq,
                    pseq,
                )
        self._last[node] = header.seq
        if not in_window:
            return False
        st = self.stats.node(node)
        st.batches += 1
        st.first_seq = header.seq if st.first_seq is None else min(st.first_seq, header.seq)
        st.last_seq = header.seq if st.last_seq is None else max(st.last_seq, header.seq)
        return True
