"""Sans-I/O parts of the archiver: layout names, index bytes, the per-partition plan."""

from __future__ import annotations

import pytest

from archiver import Known, PartitionPlan
from rawcap.archive import (
    ArchiveStore,
    IndexEntry,
    build_object,
    data_key,
    escape_node,
    hour_of,
    index_key,
    object_name,
    parse_object_name,
    unescape_node,
)
from schemas import decode_header
from schemas.errors import ConfigError
from schemas.stream import split_frames

from .helpers import make_batch

T0 = 1_796_150_000_000_000_000  # 2026-12-01T18:33:20Z


def _rec(node: str, seq: int, t0: int = T0) -> tuple[bytes, object]:
    v = make_batch(node, seq, t0, packets=2, size=50)
    return v, decode_header(v)[0]


def test_names_and_layout() -> None:
    name = object_name("rawcap.packets", 3, 100, 199)
    assert name == "rawcap.packets-00003-00000000000000000100-00000000000000000199"
    assert parse_object_name(f"x/{name}.rcsg") == ("rawcap.packets", 3, 100, 199)
    h = hour_of(T0)
    assert data_key("node-1", h, name) == f"node=node-1/date=2026-12-01/hour=18/{name}.rcsg"
    assert index_key("node-1", h, name) == f"index/date=2026-12-01/hour=18/node=node-1/{name}.json"
    for node in ("ip-10-0-0-1.ec2.internal", "a b/c", "ünï", ".hidden", "~x", ""):
        esc = escape_node(node)
        assert "/" not in esc and not esc.startswith(".") and unescape_node(esc) == node


def test_object_and_index_round_trip() -> None:
    batches = [(10 + i, *_rec("n", i + 1, T0 + i * 10**9)) for i in range(3)]
    entry, data = build_object("n", hour_of(T0), "rawcap.packets", 2, batches)
    frames, _ = split_frames(data)
    assert [bytes(f.value) for f in frames] == [b[1] for b in batches]
    assert [f.offset for f in frames] == [r.pos for r in entry.frames]
    assert entry.size == len(data) and entry.first_offset == 10 and entry.last_offset == 12
    again = IndexEntry.from_json(entry.to_json())
    assert again == entry and again.to_json() == entry.to_json()  # deterministic bytes


def test_plan_cuts_by_size_and_hour_and_commits_behind_open_buffers() -> None:
    plan = PartitionPlan("rawcap.packets", 0, object_size=600)
    closed = []
    h = hour_of(T0)
    for off in range(6):
        v, hdr = _rec("a", off + 1)
        closed += plan.add(off, v, hdr, h, 0, now=0.0)  # type: ignore[arg-type]
    assert closed and all(b.size <= 600 for b in closed)
    assert plan.commit_point() == closed[0].first_offset == 0
    for b in closed:
        plan.written(b)
    assert plan.commit_point() == min(b.first for b in plan.open.values())
    v, hdr = _rec("a", 7, T0 + 3600 * 10**9)
    rolled = plan.add(6, v, hdr, h + 1, 0, now=0.0)  # type: ignore[arg-type]
    assert [b.hour for b in rolled] == [h]  # the node moved on: its earlier hour is complete
    for b in rolled:
        plan.written(b)
    assert plan.commit_point() == 6
    assert [b.first for b in plan.due(10.0, 5.0)] == [6]


def test_plan_closes_a_caught_up_backlog_at_once_and_lets_a_live_tail_fill() -> None:
    plan = PartitionPlan("rawcap.packets", 0, object_size=1 << 20)
    h = hour_of(T0)
    stamped_ms = T0 // 10**6
    for off, node in enumerate(("backlog", "live")):
        v, hdr = _rec(node, 1)
        plan.add(off, v, hdr, h, stamped_ms if node == "backlog" else stamped_ms + 100_000,  # type: ignore[arg-type]
                 now=0.0)
    now_ms = stamped_ms + 101_000  # the live batch was stamped 1 s ago, the backlog's 101 s ago
    assert plan.due(1.0, 120.0) == []  # neither open for the interval yet
    assert plan.due(1.0, 60.0, caught_up_ms=None) == []  # not read to the end: keep filling
    assert [b.node for b in plan.due(1.0, 60.0, caught_up_ms=now_ms)] == ["backlog"]
    assert [b.node for b in plan.due(60.0, 60.0, caught_up_ms=now_ms)] == ["live"]


def test_plan_skips_indexed_objects_and_adopts_unindexed_ones() -> None:
    plan = PartitionPlan("rawcap.packets", 0, object_size=1 << 20)
    h = hour_of(T0)
    plan.set_known("a", h, [Known(0, 4, True), Known(5, 9, False)])
    out = []
    for off in range(12):
        v, hdr = _rec("a", off + 1)
        out += plan.add(off, v, hdr, h, 0, now=0.0)  # type: ignore[arg-type]
    assert plan.skipped == 5 and plan.adopted == 1
    assert [(b.first, b.batches[-1][0]) for b in out] == [(5, 9)]  # the same key again
    assert [b.first for b in plan.open.values()] == [10]
    assert plan.commit_point() == 5


def test_bad_urls() -> None:
    with pytest.raises(ConfigError, match="unknown scheme 'ftp://'"):
        ArchiveStore("ftp://host/x")
    with pytest.raises(ConfigError, match="not set"):
        ArchiveStore("")
    with pytest.raises(ConfigError, match="no bucket"):
        ArchiveStore("s3:///x")
