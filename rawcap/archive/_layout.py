"""The archive's object layout and index format (what ``_store.py`` stores and
``_window.py`` reads; the package docstring has the picture)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from schemas.errors import RawcapError
from schemas.stream import FRAME, STREAM_HEADER, frame_batch, stream_header

__all__ = (
    "HOUR_NS",
    "INDEX_FORMAT",
    "FrameRef",
    "IndexEntry",
    "build_object",
    "data_key",
    "escape_node",
    "hour_of",
    "hour_path",
    "index_key",
    "node_of_index_key",
    "object_name",
    "object_parts",
    "parse_hour_path",
    "parse_object_name",
    "unescape_node",
)

INDEX_FORMAT: Final = "rawcap.archive.index/1"
HOUR_NS: Final = 3_600_000_000_000
_SAFE = re.compile(r"[A-Za-z0-9_.-]")
_NAME_RE = re.compile(r"^(?P<topic>.+)-(?P<p>\d{5})-(?P<first>\d{20})-(?P<last>\d{20})$")


# -- layout ---------------------------------------------------------------------------------
def escape_node(node: str) -> str:
    """Node name as one path segment: ``[A-Za-z0-9_.-]`` kept, every other byte ``~HH``."""
    out = "".join(ch if _SAFE.match(ch) else "".join(f"~{b:02X}" for b in ch.encode()) for ch in node)
    if not out or out.startswith("."):
        out = "~2E" + out[1:] if out else "~"
    return out


def unescape_node(text: str) -> str:
    if text == "~":
        return ""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "~" and i + 3 <= len(text) and re.fullmatch(r"[0-9A-F]{2}", text[i + 1 : i + 3]):
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += text[i].encode()
            i += 1
    return raw.decode(errors="replace")


def hour_of(ns: int) -> int:
    """Hours since the epoch (UTC) of a nanosecond timestamp."""
    return ns // HOUR_NS


def hour_path(hour: int) -> str:
    t = dt.datetime.fromtimestamp(hour * 3600, dt.UTC)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


def parse_hour_path(date: str, hour: str) -> int:
    t = dt.datetime.strptime(f"{date.removeprefix('date=')} {hour.removeprefix('hour=')}", "%Y-%m-%d %H")
    return int(t.replace(tzinfo=dt.UTC).timestamp()) // 3600


def object_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}-{partition:05d}-{first:020d}-{last:020d}"


def parse_object_name(name: str) -> tuple[str, int, int, int]:
    m = _NAME_RE.match(name.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".rcsg"))
    if not m:
        raise ValueError(f"not an archive object name: {name!r}")
    return m["topic"], int(m["p"]), int(m["first"]), int(m["last"])


def data_key(node: str, hour: int, name: str) -> str:
    return f"node={escape_node(node)}/{hour_path(hour)}/{name}.rcsg"


def index_key(node: str, hour: int, name: str) -> str:
    return f"index/{hour_path(hour)}/node={escape_node(node)}/{name}.json"


def node_of_index_key(key: str) -> str:
    seg = key.split("/")[-2]
    return unescape_node(seg.removeprefix("node="))


# -- index ----------------------------------------------------------------------------------
class FrameRef(NamedTuple):
    """One batch inside a data object: where its frame starts and what it holds."""

    pos: int  # byte offset of the frame header in the object
    length: int  # frame header + batch bytes
    seq: int
    t0: int
    t1: int
    n: int
    offset: int  # Kafka offset


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """The index object of one data object (``index/<hour>/node=<N>/<name>.json``)."""

    node: str
    hour: int
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    size: int
    frames: tuple[FrameRef, ...]

    @property
    def name(self) -> str:
        return object_name(self.topic, self.partition, self.first_offset, self.last_offset)

    @property
    def data_key(self) -> str:
        return data_key(self.node, self.hour, self.name)

    @property
    def index_key(self) -> str:
        return index_key(self.node, self.hour, self.name)

    @property
    def t0(self) -> int:
        return min((f.t0 for f in self.frames), default=0)

    @property
    def t1(self) -> int:
        return max((f.t1 for f in self.frames), default=0)

    @property
    def packets(self) -> int:
        return sum(f.n for f in self.frames)

    def to_json(self) -> bytes:
        """Deterministic bytes: the same batches always give the same index object."""
        doc = {
            "format": INDEX_FORMAT,
            "object": self.data_key,
            "node": self.node,
            "hour": hour_path(self.hour),
            "topic": self.topic,
            "partition": self.partition,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "size": self.size,
            "batches": len(self.frames),
            "packets": self.packets,
            "t0": self.t0,
            "t1": self.t1,
            "seq": [min(f.seq for f in self.frames), max(f.seq for f in self.frames)] if self.frames else [],
            "frames_fields": list(FrameRef._fields),
            "frames": [list(f) for f in self.frames],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | memoryview, key: str = "") -> IndexEntry:
        try:
            doc = json.loads(bytes(data))
            if doc.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {INDEX_FORMAT}")
            date, hour = doc["hour"].split("/")
            return cls(
                node=str(doc["node"]),
                hour=parse_hour_path(date, hour),
                topic=str(doc["topic"]),
                partition=int(doc["partition"]),
                first_offset=int(doc["first_offset"]),
                last_offset=int(doc["last_offset"]),
                size=int(doc["size"]),
                frames=tuple(FrameRef(*map(int, f)) for f in doc["frames"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RawcapError(f"archive index object {key or '?'} is not valid: {exc}") from None


def object_parts(
    node: str, hour: int, topic: str, partition: int, batches: Sequence[tuple[int, Any, Any]]
) -> tuple[IndexEntry, list[Any]]:
    """A data object as the pieces it is made of (stream header, then each batch's frame
    header and value, not joined: an uploader takes them as they are) and its index entry,
    from ``(offset, value, header)`` in offset order. Values may be any buffer."""
    parts: list[Any] = [stream_header()]
    frames: list[FrameRef] = []
    pos = STREAM_HEADER.size
    for offset, value, h in batches:
        parts.append(frame_batch(value))
        parts.append(value)
        frames.append(FrameRef(pos, FRAME.size + len(value), h.seq, h.first_ns, h.last_ns, h.count, offset))
        pos += FRAME.size + len(value)
    entry = IndexEntry(node, hour, topic, partition, batches[0][0], batches[-1][0], pos, tuple(frames))
    return entry, parts


def build_object(
    node: str, hour: int, topic: str, partition: int, batches: Sequence[tuple[int, Any, Any]]
) -> tuple[IndexEntry, bytes]:
    """Data object bytes and its index entry (:func:`object_parts`, joined)."""
    entry, parts = object_parts(node, hour, topic, partition, batches)
    return entry, b"".join(parts)
