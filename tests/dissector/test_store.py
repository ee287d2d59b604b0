from __future__ import annotations

from pathlib import Path

from dissector import CallStore
from schemas.calls import Call


def calls(n: int, start: int = 0) -> list[Call]:
    return [Call("http1", node="n", src_ip="10.0.0.1", src_port=1000 + i % 50000,
                 dst_ip="10.0.0.2", dst_port=80, req_ts_ns=(start + i) * 1000, method="GET",
                 path=f"/p/{i}" + "x" * 200, status=200) for i in range(n)]


def test_store_is_bounded_and_evicts_oldest(tmp_path: Path) -> None:
    budget = 256 * 1024
    with CallStore(tmp_path / "c.db", budget) as st:
        for k in range(10):
            st.add(calls(500, k * 500))
            assert st.used_bytes() <= budget
        assert st.evicted > 0
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
