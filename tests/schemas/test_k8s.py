"""``WorkloadIndex.resolve_span``: the answer of ``resolve`` and the times it holds, for
pods that come, go, finish late, overlap and hand their addresses on."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.k8s import PodRecord, WorkloadIndex, pack_ip

S = 1_000_000_000
FUZZ = settings(max_examples=int(os.environ.get("RAWCAP_FUZZ_EXAMPLES", "400")), deadline=None,
                derandomize=True, suppress_health_check=[HealthCheck.too_slow])
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


@st.composite
def histories(draw: Any) -> list[tuple[str, PodRecord | None, int]]:
    ops: list[tuple[str, PodRecord | None, int]] = []
    for i in range(draw(st.integers(1, 12))):
        name = f"p{draw(st.integers(0, 5))}"
        start = draw(st.integers(0, 100)) * S
        end = draw(st.one_of(st.just(0), st.integers(0, 120).map(lambda x: x * S)))
        if draw(st.integers(0, 5)) == 0:
            ops.append((f"pod/ns/{name}", None, draw(st.integers(0, 130)) * S))
            continue
        rec = PodRecord("ns", name, f"uid-{name}-{i % 3}", "n1", (draw(st.sampled_from(IPS)),),
                        phase="Succeeded" if end else "Running", start_ns=start,
                        end_ns=max(end, start) if end else 0)
        ops.append((rec.key, rec, draw(st.integers(0, 130)) * S))
    return ops


@FUZZ
@given(histories(), st.lists(st.integers(-5, 140), min_size=1, max_size=20))
def test_resolve_span_holds_its_answer(ops: list[tuple[str, PodRecord | None, int]],
                                       times: list[int]) -> None:
    idx = WorkloadIndex()
    for key, rec, ts in ops:
        idx.apply(key, rec, ts)
    for ip in map(pack_ip, IPS):
        for t in times:
            ts = t * S + 7
            found, lo, hi = idx.resolve_span(ip, ts)
            assert found == idx.resolve(ip, ts) and lo <= ts < hi
            for probe in (lo, hi - 1, (lo + hi) // 2, *range(-5 * S, 140 * S, S // 2)):
                if lo <= probe < hi:
                    assert idx.resolve(ip, probe) == found
