"""``--follow``: a live tail. Batches are emitted as they arrive, each in its own packet
order; nodes are not merged across batches (a live tail has no end to wait for)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio

from schemas import decode_batch
from schemas.errors import BatchError

from ._merge import CorruptFn, FetchFn
from ._types import Lane, MatchFn, WindowStats, WPacket

__all__ = ("follow",)

#: How long an idle tail waits before it asks every lane again.
_IDLE = 0.2


async def follow(
    lanes: Sequence[Lane], fetch: FetchFn, corrupt: CorruptFn, stats: WindowStats, lo: int,
    match: MatchFn | None,
) -> AsyncIterator[list[WPacket]]:
    """Packets from ``lo`` on, batch by batch, as the lanes deliver them; never ends."""
    while True:
        out: list[WPacket] = []
        for lane in lanes:
            got = await fetch(lane)
            for header, value, off, meta in got or []:
                if off < 0 or header.count == 0:
                    continue
                try:
                    packets = decode_batch(value).packets
                except BatchError as exc:
                    await corrupt(value, {"source": lane.name, **meta}, exc)
                    continue
                st = stats.node(header.node)
                ifaces = header.ifaces
                for p in packets:
                    if p.ts_ns < lo or (match is not None and not match(p.data, p.origlen, p.ts_ns)):
                        continue
                    out.append(
                        WPacket(
                            p.ts_ns,
                            header.node,
                            ifaces.get(p.ifindex, str(p.ifindex)),
                            p.caplen,
                            p.origlen,
                            p.pkttype,
                            p.data,
                        )
                    )
                    st.packets += 1
                    st.bytes += p.caplen
        if out:
            yield out
        else:
            await anyio.sleep(_IDLE)
