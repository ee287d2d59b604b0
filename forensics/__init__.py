"""Forensics: ``rawcap consume``, ``rawcap pcap export|import`` and ``rawcap snapshot ...``.

What an incident responder runs: any time window, node set and filter out of
``rawcap.packets`` (or a node buffer, the archive, a snapshot) as lines, JSON or pcapng, and
immutable snapshots that outlive the rolling topic. The snapshot format is shared plumbing
(``rawcap.snapshots``), so the dissector reads snapshots too.

The names below are imported on first use, so that ``rawcap pcap export`` does not load the
snapshot and import code it does not run.
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from ._export import OutputFile, write_capture
    from ._import import import_capture, iter_batches
    from ._snapshot import create_snapshot

__all__ = (
    "OutputFile",
    "create_snapshot",
    "import_capture",
    "iter_batches",
    "write_capture",
)

_HOME = {
    "OutputFile": "._export",
    "write_capture": "._export",
    "import_capture": "._import",
    "iter_batches": "._import",
    "create_snapshot": "._snapshot",
}


def __getattr__(name: str) -> typing.Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
