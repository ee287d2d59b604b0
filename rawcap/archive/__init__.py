"""The long-term archive: object layout, index format, store access and the window reader.

What it owns: the archive's format, writer side and reader side together. The writer is
``archiver/`` (``rawcap archive``: it builds objects with :func:`build_object` and stores
them through :class:`ArchiveStore`); the readers are ``--source archive`` of the forensics
commands (:func:`iter_window`) and ``rawcap archive ls``. ``docs/archiver.md`` is the prose
version; the modules: ``_layout.py`` (keys, names, index objects), ``_store.py`` (obstore
access, errors), ``_window.py`` (the time-window reader).

Under the archive URL (``archive.url``: ``s3://bucket/prefix``, ``gs://...``,
``az://container/prefix``, ``file:///dir``)::

    node=<N>/date=YYYY-MM-DD/hour=HH/<name>.rcsg          data: a batch stream (schemas.stream)
    index/date=YYYY-MM-DD/hour=HH/node=<N>/<name>.json    index: one small object per data object
    <name> = <topic>-<partition:05d>-<first offset:020d>-<last offset:020d>

A data object holds whole batches of one node whose first packet time (``t0``) falls in
that UTC hour, byte for byte as they were on Kafka, in offset order. Its name derives from
the Kafka range it holds, so writing it again after a crash overwrites the same key with
the same bytes. The index object is written after the data object: a data object is part
of the archive once its index object exists (readers never list data prefixes). The index
names each frame's byte position, sequence number and time range, so a reader fetches only
the byte ranges of the batches inside its window, in parallel.
"""

from ._layout import (
    HOUR_NS,
    INDEX_FORMAT,
    FrameRef,
    IndexEntry,
    build_object,
    data_key,
    escape_node,
    hour_of,
    hour_path,
    index_key,
    node_of_index_key,
    object_name,
    object_parts,
    parse_hour_path,
    parse_object_name,
    unescape_node,
)
from ._store import SCHEMES, AccessDenied, ArchiveStore, ObjectMissing
from ._window import ArchiveWindow, iter_window

__all__ = (
    "HOUR_NS",
    "INDEX_FORMAT",
    "SCHEMES",
    "AccessDenied",
    "ArchiveStore",
    "ArchiveWindow",
    "FrameRef",
    "IndexEntry",
    "ObjectMissing",
    "build_object",
    "data_key",
    "escape_node",
    "hour_of",
    "hour_path",
    "index_key",
    "iter_window",
    "node_of_index_key",
    "object_name",
    "object_parts",
    "parse_hour_path",
    "parse_object_name",
    "unescape_node",
)
