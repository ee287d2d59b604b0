"""RESP reader states, one table (values are parsed whole once their bytes are buffered)."""

from __future__ import annotations

import enum

__all__ = ("TRANSITIONS", "State", "step")


class State(enum.Enum):
    VALUE = "value"    # expecting the next top-level value
    RESYNC = "resync"  # lost bytes: RESP has no reliable sync point, wait for flow end
    ERROR = "error"


S = State
TRANSITIONS: dict[tuple[State, str], State] = {(S.VALUE, "value"): S.VALUE}
for _s in S:
    TRANSITIONS[(_s, "gap")] = S.RESYNC
    TRANSITIONS[(_s, "malformed")] = S.ERROR


def step(state: State, what: str) -> State:
    return TRANSITIONS[(state, what)]
