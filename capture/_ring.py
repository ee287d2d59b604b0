"""AF_PACKET TPACKET_V3 mmap ring: the kernel fills blocks, we hand them on whole.

Per-packet Python work is what makes a Python capturer expensive (DESIGN.md's measured
table), so the reader never walks frames: it waits for the kernel to retire a block, gives
the caller a ``memoryview`` of the block, and returns the block to the kernel as soon as the
caller is done with it (the batcher compresses straight from the view).

The socket is opened with protocol 0 (receives nothing), the eBPF filter is attached, the
ring is set up, and only then the socket is bound with ``ETH_P_ALL``: no unfiltered packet
ever lands in the ring.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from schemas.errors import RawcapError
from schemas.tpacket import (
    BLOCK_DESC_FIELDS,
    SOCKADDR_LL_FIELDS,
    TPACKET_REQ3_FIELDS,
    TPACKET_STATS_V3_FIELDS,
    field_offset,
    fields_struct,
)

__all__ = ("CaptureDenied", "NoSuchInterface", "Ring", "RingStats", "ifindex_of")

SOL_PACKET: Final = 263
SO_ATTACH_BPF: Final = 50
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
TPACKET_V3: Final = 2
ETH_P_ALL: Final = 0x0003
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
# The kernel's structures in the running machine's byte order (schemas.tpacket's tables).
TPACKET_REQ3: Final = fields_struct(TPACKET_REQ3_FIELDS, "=")
TPACKET_STATS_V3: Final = fields_struct(TPACKET_STATS_V3_FIELDS, "=")
SOCKADDR_LL: Final = fields_struct(SOCKADDR_LL_FIELDS, "=")
_STATUS_OFFSET: Final = field_offset(BLOCK_DESC_FIELDS, "block_status")
_NUM_PKTS_OFFSET: Final = field_offset(BLOCK_DESC_FIELDS, "num_pkts")
#: IEEE 802 local experimental EtherType 1: what the socket is bound to once it must take
#: no more packets (:meth:`Ring.stop_receiving`).
_ETH_P_NONE: Final = 0x88B5
_libc = ctypes.CDLL(None, use_errno=True)


class NoSuchInterface(RawcapError):
    """The interface named on the command line does not exist."""


class CaptureDenied(RawcapError):
    """The process may not open a packet socket (needs CAP_NET_RAW)."""


def _bind_all(sock: socket.socket, proto: int) -> None:
    """bind(2) to every interface (``sll_ifindex`` 0). Python's AF_PACKET address needs an
    interface name, and ``""`` is looked up as one (ENODEV), so call libc directly."""
    sll = SOCKADDR_LL.pack(socket.AF_PACKET, socket.htons(proto), 0, 0, 0, 0, b"")
    if _libc.bind(sock.fileno(), ctypes.c_char_p(sll), len(sll)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"binding the packet socket to all interfaces: {os.strerror(err)}")


def ifindex_of(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise NoSuchInterface(f"interface {name!r} does not exist on this node") from None


@dataclass
class RingStats:
    """Cumulative ``PACKET_STATISTICS``: packets seen by the socket, dropped, freezes."""

    packets: int = 0
    drops: int = 0
    freezes: int = 0


class Ring:
    """One TPACKET_V3 RX ring on one socket (bound to one ifindex, or 0 for all)."""

    def __init__(self, *, ifindex: int, block_size: int, block_count: int,
                 block_timeout_ms: int, bpf_fd: int | None = None) -> None:
        if block_size < 4096 or block_size & (block_size - 1):
            raise RawcapError(f"capture.ring.blockSize {block_size} must be a power of two >= 4096")
        self.block_size, self.block_count = block_size, block_count
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise CaptureDenied(
                "not allowed to open a packet socket: the agent needs CAP_NET_RAW (or root)"
            ) from None
        try:
            if bpf_fd is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, bpf_fd)
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            req = TPACKET_REQ3.pack(block_size, block_count, block_size, block_count,
                                    max(1, block_timeout_ms), 0, 0)
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            except OSError as exc:
                if exc.errno == errno.ENOMEM:
                    raise RawcapError(
                        f"cannot allocate a {block_count} x {block_size} byte ring: lower "
                        "capture.ring.blockCount or capture.ring.blockSize"
                    ) from None
                raise
            self.map = mmap.mmap(self.sock.fileno(), block_size * block_count,
                                 mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.view = memoryview(self.map)
            # The name is looked up now, in the namespace the ring is opened in; bind(2)
            # later resolves it in the socket's own namespace, whichever thread calls.
            self._ifname = socket.if_indextoname(ifindex) if ifindex else ""
            if ifindex == 0:
                _bind_all(self.sock, ETH_P_ALL)
            else:
                self.sock.bind((self._ifname, ETH_P_ALL))
        except BaseException:
            self.sock.close()
            raise
        self.ifindex = ifindex
        self.cur = 0
        self.stats = RingStats()
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN | select.POLLERR)

    def _block_status(self, i: int) -> int:
        return int.from_bytes(self.view[i * self.block_size + _STATUS_OFFSET:
                                        i * self.block_size + _STATUS_OFFSET + 4], "little")

    def ready(self) -> bool:
        return bool(self._block_status(self.cur) & TP_STATUS_USER)

    def drained(self) -> bool:
        """Nothing retired is waiting and the kernel's open block (the one after the last
        taken) holds no packet: after :meth:`stop_receiving`, every packet was handed on."""
        if self.ready():
            return False
        at = self.cur * self.block_size + _NUM_PKTS_OFFSET
        return int.from_bytes(self.view[at:at + 4], "little") == 0

    def wait(self, timeout_ms: int) -> bool:
        """Block (in a worker thread) until the current block is retired or the timeout."""
        if self.ready():
            return True
        self._poll.poll(timeout_ms)
        return self.ready()

    def take(self, consume: Callable[[memoryview], None]) -> int:
        """Hand every retired block in order to ``consume``, then return it to the kernel.

        Returns the number of blocks handed on. ``consume`` must not keep the view.
        """
        n = 0
        bs = self.block_size
        while self.ready():
            start = self.cur * bs
            block = self.view[start:start + bs]
            try:
                consume(block)
            finally:
                block.release()
                # Hand the block back: the kernel owns it again once block_status is 0.
                self.map[start + _STATUS_OFFSET:start + _STATUS_OFFSET + 4] = b"\0\0\0\0"
            self.cur = (self.cur + 1) % self.block_count
            n += 1
        return n

    def stop_receiving(self) -> None:
        """Take no more packets. bind(2) to another protocol unhooks the socket from
        ``ETH_P_ALL`` (the kernel waits for receivers in progress: ``synchronize_net``) and
        hooks it to ``_ETH_P_NONE``, an experimental EtherType that the eBPF filter rejects
        anyway (protocol 0 would not do: bind keeps the current protocol for 0). Blocks
        already filled stay readable and the open one is still retired after the block
        timeout, so after a last :meth:`take` every packet ``PACKET_STATISTICS`` counts was
        either handed on or dropped."""
        if self.ifindex == 0:
            _bind_all(self.sock, _ETH_P_NONE)
        else:
            self.sock.bind((self._ifname, _ETH_P_NONE))

    def read_stats(self) -> RingStats:
        """Fold the kernel's since-last-read counters into the cumulative totals."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
        packets, drops, freezes = TPACKET_STATS_V3.unpack(raw)
        self.stats.packets += packets
        self.stats.drops += drops
        self.stats.freezes += freezes
        return self.stats

    def close(self) -> None:
        try:
            self.read_stats()
        except OSError:
            pass
        self.view.release()
        self.map.close()
        self.sock.close()

