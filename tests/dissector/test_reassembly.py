from __future__ import annotations

import random

from dissector._reassembly import ACK, FIN, RST, SYN, Gap, StreamData, StreamEnd, collect_events

MSG = bytes(range(256)) * 8  # 2048 bytes


def segs(data: bytes, isn: int, size: int, direction: int = 0) -> list[tuple]:
    out = [(direction, isn, SYN, b"", 0)]
    for i in range(0, len(data), size):
        out.append((direction, (isn + 1 + i) % (1 << 32), ACK, data[i:i + size], i))
    return out


def joined(events: list, direction: int = 0) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, StreamData) and e.direction == direction)


def test_in_order_across_seq_wrap() -> None:
    evs, st = collect_events(segs(MSG, (1 << 32) - 700, 100))
    assert joined(evs) == MSG and st.gaps == 0


def test_out_of_order_retransmit_overlap() -> None:
    s = segs(MSG, 1000, 100)
    body = s[1:]
    rng = random.Random(7)
    rng.shuffle(body)
    # retransmissions and overlapping segments of different boundaries
    extra = [(0, 1001 + 50, ACK, MSG[50:250], 0), (0, 1001 + 1990, ACK, MSG[1990:], 0)]
    evs, st = collect_events([s[0], *body, *body[:5], *extra])
    assert joined(evs) == MSG
    assert st.gaps == 0 and st.retransmits > 0 and st.ooo_segments > 0


def test_lost_segment_becomes_gap_and_stream_continues() -> None:
    s = segs(MSG, 5, 100)
    del s[4]  # bytes 300..399 never captured
    evs, _st = collect_events(s)
    gaps = [e for e in evs if isinstance(e, Gap)]
    assert len(gaps) == 1 and gaps[0].nbytes == 100
    assert joined(evs) == MSG[:300] + MSG[400:]
    assert isinstance(evs[-1], StreamEnd)


def test_ooo_caps_force_gap() -> None:
    s = segs(MSG, 5, 100)
    del s[1]  # first data segment missing: everything else waits
    evs, st = collect_events(s, close=False, max_ooo_segments=4)
    # the 5th held segment gives up on the hole: one gap of exactly the missing 100 bytes,
    # then everything after it is delivered in order without waiting for the end
    gaps = [e for e in evs if isinstance(e, Gap)]
    assert st.ooo_dropped == 1 and st.gaps == 1 and [g.nbytes for g in gaps] == [100]
    assert joined(evs) == MSG[100:]
    assert evs[0] == gaps[0]


def test_ooo_byte_cap_holds_while_waiting() -> None:
    from dissector import TcpStream
    from dissector._reassembly import _Collector

    sink = _Collector()
    stream = TcpStream(sink, max_ooo_bytes=350, max_ooo_segments=256)
    s = segs(MSG, 5, 100)
    del s[1]
    for seg in s:
        stream.segment(*seg)
        assert stream.halves[0].ooo_bytes <= 350
    assert stream.stats.gaps == 1 and joined(sink.events) == MSG[100:]


def test_midstream_start_reports_unknown_gap() -> None:
    evs, _ = collect_events([(0, 777, ACK, b"tail of something", 1), (1, 9, ACK, b"x", 2)])
    assert isinstance(evs[0], Gap) and evs[0].nbytes == 0
    assert joined(evs) == b"tail of something"


def test_fin_both_sides_and_rst() -> None:
    evs, _ = collect_events([(0, 0, SYN, b"", 0), (1, 50, SYN | ACK, b"", 0),
                             (0, 1, ACK | FIN, b"bye", 1), (1, 51, ACK | FIN, b"ok", 2)],
                            close=False)
    ends = [e for e in evs if isinstance(e, StreamEnd)]
    assert [e.direction for e in ends] == [0, 1]
    evs, _ = collect_events([(0, 0, SYN, b"", 0), (0, 10, ACK, b"later", 1),
                             (0, 0, RST, b"", 2)], close=False)
    assert isinstance(evs[-1], StreamEnd) and evs[-1].reason == "rst"
    assert any(isinstance(e, Gap) for e in evs) and joined(evs) == b"later"
