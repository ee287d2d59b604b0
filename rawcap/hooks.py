"""Test-only hooks: switches that make tests and benchmarks take a reference path.

They are not settings (those are the keys of ``rawcap/config.py``): nothing a user runs needs
them. Tests and ``bench/`` name them in one environment variable, ``RAWCAP_TEST_HOOKS``,
comma-separated:

``no-fastpcap``
    the export converts batch bodies with the pure-Python reference, not the C twin
``no-fastzstd``
    the C converter leaves inflating a body to ``schemas.decompress_body``
``no-fast-exit``
    a command that may end its process at once (``pcap export``) runs the interpreter's
    teardown instead
``no-mallopt``
    the allocator keeps glibc's defaults
``export-stats``
    ``rawcap pcap export`` prints where its CPU went, per thread (``bench/export``)
``no-ctwins``
    the dissector uses its pure-Python references instead of their compiled twins
    (``dissector/*.c``), as when a C build failed
``archive-handover``
    each fetch lane of ``rawcap archive`` hands its partition to aiokafka after its first
    records, as it does when the project's fetch client meets a leader change or an offset
    out of range (which a one-broker test stack cannot be made to produce on demand)
"""

from __future__ import annotations

import os

__all__ = ("HOOKS", "hook")

HOOKS = frozenset({"no-fastpcap", "no-fastzstd", "no-fast-exit", "no-mallopt", "export-stats",
                   "archive-handover", "no-ctwins"})


def hook(name: str) -> bool:
    """Whether ``RAWCAP_TEST_HOOKS`` turns the hook ``name`` on."""
    if name not in HOOKS:
        raise ValueError(f"unknown test hook {name!r}")
    value = os.environ.get("RAWCAP_TEST_HOOKS") or ""
    return name in {h.strip() for h in value.split(",")}
