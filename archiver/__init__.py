"""Long-term archive consumer: ``rawcap.packets`` into object storage, exactly once.

The layout, the index format and the reader live in :mod:`rawcap.archive` (shared
with every reader); this package is the writer: :class:`Archiver` (consumer group
``rawcap-archiver``), its sans-I/O bookkeeping :class:`PartitionPlan`, metrics, the
retention sweep and the ``rawcap archive`` commands. See docs/archiver.md.
"""

from ._archiver import GROUP, Archiver
from ._ls import hour_summaries
from ._metrics import Metrics
from ._plan import Buffer, Known, PartitionPlan
from ._retention import sweep
from ._summary import Summary

__all__ = (
    "GROUP",
    "Archiver",
    "Buffer",
    "Known",
    "Metrics",
    "PartitionPlan",
    "Summary",
    "hour_summaries",
    "sweep",
)
