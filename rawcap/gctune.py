"""The garbage collector's young-generation threshold for the batch consumers.

``rawcap dissect`` and ``rawcap enrich`` keep objects alive by the hundred thousand between
writes (calls waiting in a batch of a few thousand, ~10 tracked objects each; index spans
and flows waiting for their interval). At CPython's default threshold of 700 each batch went
through dozens of young collections that walked them all, and the survivors on to full
collections that walked them again (~15 % of a replay's CPU: docs/dissector.md). Cyclic
garbage, of which they make little, waits a little longer for its collection.
"""

from __future__ import annotations

import gc

__all__ = ("GC_YOUNG", "tune_gc")

#: Young-generation collections after this many net allocations of tracked objects.
GC_YOUNG = 50_000


def tune_gc() -> None:
    """Collect garbage cycles every :data:`GC_YOUNG` net allocations (older generations as
    CPython's defaults): for a command's whole process, called by its CLI entry."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, older, oldest)
