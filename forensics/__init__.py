"""Forensics: ``rawcap consume``, ``rawcap pcap export|import`` and ``rawcap snapshot ...``.

What an incident responder runs: any time window, node set and filter out of
``rawcap.packets`` (or a node buffer, the archive, a snapshot) as lines, JSON or pcapng, and
immutable snapshots that outlive the rolling topic. Reading a snapshot is shared plumbing
(``rawcap.snapshots``), so the dissector reads them too.
"""

from ._export import OutputFile, write_capture
from ._import import import_capture, iter_batches
from ._snapshot import create_snapshot, delete_snapshot, verify_snapshot

__all__ = (
    "OutputFile",
    "create_snapshot",
    "delete_snapshot",
    "import_capture",
    "iter_batches",
    "verify_snapshot",
    "write_capture",
)
