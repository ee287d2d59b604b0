"""PostgreSQL reader states, one table (client starts untyped, then typed messages)."""

from __future__ import annotations

import enum

__all__ = ("TRANSITIONS", "State", "step")


class State(enum.Enum):
    STARTUP = "startup"      # client: untyped startup / SSLRequest / CancelRequest
    SSL_REPLY = "ssl-reply"  # server: one byte, 'S' (TLS follows) or 'N'
    MESSAGES = "messages"    # typed messages
    OPAQUE = "opaque"        # TLS or COPY-free zone we do not parse
    RESYNC = "resync"        # lost bytes: no reliable sync point
    ERROR = "error"


S = State
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.STARTUP, "startup"): S.MESSAGES,
    (S.STARTUP, "ssl-request"): S.STARTUP,
    (S.STARTUP, "cancel"): S.OPAQUE,
    (S.MESSAGES, "message"): S.MESSAGES,
    (S.MESSAGES, "expect-ssl"): S.SSL_REPLY,
    (S.SSL_REPLY, "ssl-no"): S.MESSAGES,
    (S.SSL_REPLY, "ssl-yes"): S.OPAQUE,
    (S.STARTUP, "tls"): S.OPAQUE,
}
for _s in S:
    TRANSITIONS[(_s, "gap")] = S.RESYNC
    TRANSITIONS[(_s, "malformed")] = S.ERROR


def step(state: State, what: str) -> State:
    return TRANSITIONS[(state, what)]
