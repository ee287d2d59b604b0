"""DNS-over-TCP framing: a two-byte length prefix, then the message. One table."""

from __future__ import annotations

import enum

__all__ = ("TRANSITIONS", "State", "step")


class State(enum.Enum):
    LENGTH = "length"
    MESSAGE = "message"
    RESYNC = "resync"  # lost bytes: framing is unrecoverable until the flow ends
    ERROR = "error"


S = State
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.LENGTH, "length"): S.MESSAGE,
    (S.MESSAGE, "message"): S.LENGTH,
}
for _s in S:
    TRANSITIONS[(_s, "gap")] = S.RESYNC
    TRANSITIONS[(_s, "malformed")] = S.ERROR


def step(state: State, what: str) -> State:
    return TRANSITIONS[(state, what)]
