"""HTTP/2 per-direction reader states, one table."""

from __future__ import annotations

import enum

__all__ = ("TRANSITIONS", "State", "step")


class State(enum.Enum):
    PREFACE = "preface"            # client side: expecting the 24-byte connection preface
    FRAMES = "frames"              # any frame
    CONTINUATION = "continuation"  # a header block is open: only CONTINUATION may follow
    ERROR = "error"                # malformed or lost bytes: HPACK state is gone, flow is done


S = State
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.PREFACE, "preface"): S.FRAMES,
    (S.FRAMES, "frame"): S.FRAMES,
    (S.FRAMES, "headers-open"): S.CONTINUATION,
    (S.CONTINUATION, "continuation-open"): S.CONTINUATION,
    (S.CONTINUATION, "headers-close"): S.FRAMES,
}
for _s in S:
    # A gap inside HTTP/2 loses HPACK dynamic-table state: nothing later can be trusted.
    TRANSITIONS[(_s, "gap")] = S.ERROR
    TRANSITIONS[(_s, "malformed")] = S.ERROR


def step(state: State, what: str) -> State:
    return TRANSITIONS[(state, what)]
