"""Open capture sockets inside another network namespace (``rawcap capture --netns``).

A packet socket belongs to the namespace it was created in, for its whole life. The agent
therefore switches only the calling thread into the target namespace while it resolves
interface names and creates the ring, then switches back: Kafka and ``/metrics`` keep
using the node's own network. This lets one agent capture a pod's (or a test's)
namespace without running inside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from schemas.errors import RawcapError

__all__ = ("in_netns",)

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _path(name: str) -> str:
    return name if name.startswith("/") else f"/run/netns/{name}"


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the calling thread in namespace ``name`` (``ip netns`` name or a path)."""
    if not name:
        yield
        return
    try:
        target = os.open(_path(name), os.O_RDONLY)
    except FileNotFoundError:
        raise RawcapError(f"network namespace {name!r} does not exist ({_path(name)})") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise RawcapError(f"cannot enter network namespace {name!r}: {os.strerror(err)} "
                              "(needs CAP_SYS_ADMIN)")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                raise RawcapError("cannot return to the agent's own network namespace")
    finally:
        os.close(target)
        os.close(own)
