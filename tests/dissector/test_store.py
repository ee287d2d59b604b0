from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dissector import CallStore
from dissector._run import CallOutput
from schemas.calls import Call, call_rows, decode_calls, encode_call, encode_calls


def calls(n: int, start: int = 0, node: str = "n") -> list[Call]:
    return [Call("http1", node=node, src_ip="10.0.0.1", src_port=1000 + j % 50000,
                 dst_ip="10.0.0.2", dst_port=80, req_ts_ns=j * 1000, method="GET",
                 path=f"/p/{j}" + "x" * 200, status=200) for j in range(start, start + n)]


def test_store_is_bounded_and_evicts_oldest(tmp_path: Path) -> None:
    budget = 256 * 1024
    with CallStore(tmp_path / "c.db", budget) as st:
        for k in range(10):
            st.add(calls(500, k * 500))
            assert st.used_bytes() <= budget
        assert st.evicted > 0
        assert st.count() + st.evicted == 5000
        kept = list(st.query())
        assert kept[0].req_ts_ns > 0  # the very first calls are gone
        assert kept[-1].req_ts_ns == 4999 * 1000  # the newest are kept
    assert (tmp_path / "c.db").stat().st_size < 4 * budget


def test_store_filters_and_dedup(tmp_path: Path) -> None:
    with CallStore(tmp_path / "c.db", 10 << 20) as st:
        assert st.add(calls(10)) == 10
        assert st.add(calls(10)) == 0  # same calls again: not duplicated
        assert len(list(st.query(lo_ns=3000, hi_ns=6000))) == 3
        assert len(list(st.query(port=1004))) == 1
        assert len(list(st.query(proto="dns"))) == 0


def test_replays_of_overlapping_ranges_add_no_duplicates(tmp_path: Path) -> None:
    """Other flush boundaries, an overlapping range, two nodes: each call is stored once."""
    with CallStore(tmp_path / "c.db", 64 << 20) as st:
        first = calls(1000)
        for i in range(0, 1000, 300):
            st.add(first[i:i + 300])
        again = calls(1000, 500)  # calls 500..1499: half of them stored already
        assert sum(st.add(again[i:i + 170]) for i in range(0, 1000, 170)) == 500
        assert st.add(calls(100, 0, node="other")) == 100  # same times, another node
        assert st.count() == 1600
        got = [(c.node, c.req_ts_ns) for c in st.query()]
        assert len(got) == len(set(got)) == 1600


def test_statements_of_one_query_are_distinct_calls_and_replay_adds_none(tmp_path: Path) -> None:
    """PostgreSQL: the statements of one simple Query share the request and often the
    response segment (same times, same addresses); their place in the batch tells them
    apart, so all are stored, once each, however the replay's flushes fall."""
    def pg(q: int, k: int) -> Call:
        return Call("postgres", node="n", src_ip="10.0.0.1", src_port=5000, dst_ip="10.0.0.2",
                    dst_port=5432, req_ts_ns=1000 + q, resp_ts_ns=2000 + q, command="INSERT",
                    key=f"INSERT INTO t VALUES ({k})", extra={"statement": k, "tag": "INSERT 0 1"})

    batch = [pg(q, k) for q in range(40) for k in range(5)]
    with CallStore(tmp_path / "c.db", 64 << 20) as st:
        assert st.add(batch) == 200
        assert sum(st.add(batch[i:i + 33]) for i in range(0, 200, 33)) == 0
        got = [(c.req_ts_ns, c.extra["statement"]) for c in st.query()]
        assert sorted(got) == sorted((c.req_ts_ns, c.extra["statement"]) for c in batch)


def test_query_merges_blocks_into_time_order_and_filters(tmp_path: Path) -> None:
    rng = random.Random(3)
    all_calls = []
    with CallStore(tmp_path / "c.db", 64 << 20) as st:
        for b in range(20):  # blocks whose spans overlap, calls unordered inside a block
            block = [Call("dns" if i % 7 == 0 else "http1", node=f"n{b % 2}",
                          src_ip=f"10.0.{b % 3}.{i % 5}", src_port=2000 + i, dst_ip="10.9.9.9",
                          dst_port=53 if i % 7 == 0 else 80,
                          req_ts_ns=b * 1000 + rng.randrange(3000) * 7 + i % 7)
                     for i in range(100)]
            st.add(block)
            all_calls += block
        want = sorted(all_calls, key=lambda c: c.ts_ns)
        got = list(st.query())
        assert [c.ts_ns for c in got] == [c.ts_ns for c in want] and len(got) == 2000

        def expect(pred: Callable[[Call], bool], **kw: Any) -> None:
            sel = [c for c in want if pred(c)]
            assert sorted((c.node, c.src_port, c.ts_ns) for c in st.query(**kw)) == \
                sorted((c.node, c.src_port, c.ts_ns) for c in sel)

        expect(lambda c: 5000 <= c.ts_ns < 9000, lo_ns=5000, hi_ns=9000)
        expect(lambda c: c.src_ip == "10.0.1.3" or c.dst_ip == "10.0.1.3", host="10.0.1.3")
        expect(lambda c: c.proto == "dns", proto="dns")
        expect(lambda c: 2005 in (c.src_port, c.dst_port), port=2005)
        expect(lambda c: c.node == "n1" and c.ts_ns < 7000, node="n1", hi_ns=7000)
        expect(lambda c: False, host="10.0.0.99")
        limited = list(st.query(proto="http1", limit=25, match=lambda c: c.src_port % 2 == 0))
        assert len(limited) == 25 and all(c.src_port % 2 == 0 for c in limited)
        assert [c.ts_ns for c in limited] == sorted(c.ts_ns for c in limited)


def test_store_of_the_first_layout_is_converted(tmp_path: Path) -> None:
    """One row per call with a text uid (the layout before blocks): opened, converted, the
    same calls come back, replaying them adds nothing."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE calls (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL,
          node TEXT NOT NULL, proto TEXT NOT NULL, src_ip TEXT, src_port INTEGER, dst_ip TEXT,
          dst_port INTEGER, uid TEXT UNIQUE, record BLOB NOT NULL);
        CREATE INDEX calls_ts ON calls(ts_ns);""")
    old = calls(4500, node="a") + calls(10, node="b")
    db.executemany("INSERT INTO calls(ts_ns,node,proto,src_ip,src_port,dst_ip,dst_port,uid,record)"
                   " VALUES (?,?,?,?,?,?,?,?,?)",
                   [(c.ts_ns, c.node, c.proto, c.src_ip, c.src_port, c.dst_ip, c.dst_port,
                     f"{c.node}|{c.ts_ns}", encode_call(c)) for c in old])
    db.commit()
    db.close()
    with CallStore(path, 64 << 20) as st:
        assert sorted(st.query(), key=lambda c: (c.ts_ns, c.node)) == \
            sorted(old, key=lambda c: (c.ts_ns, c.node))
        assert st.add(old[:100]) == 0
        tables = {r[0] for r in st.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "calls" not in tables
    with CallStore(path, 64 << 20) as st:  # opened again: nothing to convert
        assert st.count() == len(old)


def test_output_keeps_every_flush_for_publishing(tmp_path: Path) -> None:
    """Flushes the batch size triggers are published too (their rows are the stored ones)."""
    st = CallStore(tmp_path / "c.db", 64 << 20)
    out = CallOutput(store=st, batch=3, publish=True)
    for c in calls(7):
        out(c)
    got = out.take()
    assert [len(f.calls) for f in got] == [3, 3, 1]
    published = [c for f in got for c in decode_calls(_record(f.records))]
    assert published == calls(7)
    out.sync()  # the store is written by a thread of the output's
    assert st.count() == 7 and out.take() == []
    out.close()
    out.close()  # idempotent


def _record(rows: list[bytes] | None) -> bytes:
    assert rows is not None
    return encode_calls(rows)


@pytest.mark.parametrize("n", [1, 2500])
def test_rows_are_shared_with_the_published_record(tmp_path: Path, n: int) -> None:
    cs = calls(n)
    with CallStore(tmp_path / "c.db", 64 << 20) as st:
        st.add(cs, call_rows(cs))
        (data,) = st.db.execute("SELECT data FROM blocks").fetchone()
    assert decode_calls(data) == cs


def test_published_records_group_by_node_and_hour_within_the_size() -> None:
    """``rawcap.calls`` records of a flush: one per node and UTC hour of the calls' time (a
    call without request time by its response's), in call order, cut at
    ``CALLS_RECORD_BYTES`` (a larger row alone); every call once."""
    import anyio

    from dissector._consumer import _Publisher
    from dissector._run import Flushed
    from schemas.calls import CALLS_RECORD_BYTES

    hour = 3_600_000_000_000

    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, bytes]] = []

        async def send(self, topic: str, value: bytes, key: bytes) -> Any:
            self.sent.append((key, value))
            done: anyio.Event = anyio.Event()
            done.set()
            return done.wait()

    def sends(cs: list[Call]) -> list[tuple[bytes, list[Call]]]:
        p = Producer()

        async def go() -> None:
            pub = _Publisher(p)
            await pub.publish(Flushed(cs, call_rows(cs)))
            await pub.wait()

        anyio.run(go)
        got = [(k, decode_calls(v)) for k, v in p.sent]
        assert all(sum(map(len, call_rows(part))) <= CALLS_RECORD_BYTES or len(part) == 1
                   for _, part in got)
        return got

    one = calls(5000, 10 * hour // 1000)  # one node, one hour: cut by size only
    got = sends(one)
    assert len(got) > 1 and {k for k, _ in got} == {b"n"}
    assert [c for _, part in got for c in part] == one
    mixed = [*calls(3, 5 * hour // 1000, node="a"), *calls(2, 5 * hour // 1000, node="b"),
             Call("http1", node="a", resp_ts_ns=6 * hour + 1),
             *calls(2, 5 * hour // 1000 + 3, node="a"),
             Call("http1", node="a", path="x" * (CALLS_RECORD_BYTES + 1), req_ts_ns=6 * hour)]
    got = sends(mixed)
    assert [(k, [c.req_ts_ns or c.resp_ts_ns for c in part]) for k, part in got] == [
        (b"a", [c.req_ts_ns for c in mixed[:3] + mixed[6:8]]),
        (b"b", [c.req_ts_ns for c in mixed[3:5]]),
        (b"a", [6 * hour + 1]), (b"a", [6 * hour])]


def test_the_writer_thread_stores_everything_and_raises_what_failed(tmp_path: Path) -> None:
    from dissector._store import StoreWriter

    w = StoreWriter(CallStore(tmp_path / "c.db", 64 << 20), depth=2)
    for k in range(10):
        w.add(calls(100, k * 100))
    w.add(calls(100))  # a replay of the first: kept once
    w.close()
    w.close()  # idempotent
    with CallStore(tmp_path / "c.db", 64 << 20) as st:
        assert st.count() == 1000
        assert [c.req_ts_ns for c in st.query()] == [j * 1000 for j in range(1000)]
    broken = CallStore(tmp_path / "d.db", 64 << 20)
    w = StoreWriter(broken)
    broken.db.close()  # every write fails
    w.add(calls(3))
    with pytest.raises(sqlite3.ProgrammingError):
        w.sync()
    w.sync()  # raised once
    w.close()


def test_page_size_follows_the_budget(tmp_path: Path) -> None:
    """64 KiB pages for a new store of a budget of >= 1024 of them; an existing store keeps
    its pages."""
    with CallStore(tmp_path / "big.db", 64 << 20) as st:
        assert st.page_size == 65536
    with CallStore(tmp_path / "small.db", 256 * 1024) as st:
        assert st.page_size == 4096
        st.add(calls(10))
    with CallStore(tmp_path / "small.db", 64 << 20) as st:
        assert st.page_size == 4096 and st.count() == 10
        assert st.add(calls(20)) == 10
