"""Keep large buffers in the heap instead of fresh ``mmap`` pages.

Every stage of rawcap moves data in MiB-sized pieces (ring blocks, batch values, zstd
output, Kafka requests). glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB until
its dynamic rule raises it) with a new ``mmap`` and returns them with ``munmap`` on free, so
each such buffer is page-faulted in again, 256 faults per MiB (what that cost the shipper:
docs/capture.md). Raising the threshold to glibc's maximum and trimming the heap only when
much more is free makes freed buffers reusable: the memory stays bounded by the peak the
process already reached (at most ``TRIM_BYTES`` more is kept resident).
"""

from __future__ import annotations

import ctypes
from typing import Any

from .hooks import hook

__all__ = ("MMAP_THRESHOLD", "TRIM_BYTES", "trim", "tune")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's ceiling for ``M_MMAP_THRESHOLD`` on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_BYTES = 128 * 1024 * 1024

_done = False


def _libc(name: str) -> Any:
    """A glibc function by name, or None. Looked up in the symbols the interpreter is already
    linked with (``dlopen(NULL)``): ``ctypes.util.find_library("c")`` would import
    subprocess and tempfile and run ``ldconfig -p`` at every command's start-up.
    The library search stays as the fallback (a static or unusual interpreter build)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        pass
    try:
        from ctypes.util import find_library

        return getattr(ctypes.CDLL(find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def tune() -> bool:
    """Apply once per process; True if glibc accepted it. The test hook ``no-mallopt`` (or
    another libc) leaves the allocator alone."""
    global _done
    if _done:
        return True
    if hook("no-mallopt"):
        return False
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return _done


def trim() -> bool:
    """Give the heap's free pages back to the kernel now (glibc's ``malloc_trim(0)``, every
    arena, not only the top of the main heap); True if it released anything.

    For one-off peaks that will not come back: bcc compiles each eBPF program with LLVM in
    this process, and the compiler's tens of MiB of freed heap would otherwise stay resident
    for the agent's lifetime (below ``TRIM_BYTES`` glibc keeps them; docs/capture.md, Memory).
    The test hook ``no-mallopt`` leaves the allocator alone here too."""
    if hook("no-mallopt"):
        return False
    malloc_trim = _libc("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))
