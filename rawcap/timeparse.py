"""Times as operators type them: ISO-8601, ``now``, relative ``-5m`` / ``-1h30m``, epoch.

Everything resolves to integer nanoseconds since the epoch (UTC), the unit of every
timestamp in rawcap's wire formats.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from schemas.errors import ConfigError

from .config import parse_duration

__all__ = ("format_ns", "parse_time", "parse_window")

_RELATIVE = re.compile(r"^([+-])\s*(\S+)$")
#: The fractional seconds of an ISO-8601 time (after HH:MM:SS), any number of digits.
_FRACTION = re.compile(r"(?<=:\d\d)[.,](\d+)")


def parse_time(text: str, *, now_ns: int | None = None, what: str = "time") -> int:
    """``now``, ``-5m``, ``+30s``, ``2026-11-23T10:00:00Z``, ``2026-11-23 10:00``,
    ``1763892000`` (epoch seconds) or ``1763892000.5`` -> ns since the epoch."""
    now = time.time_ns() if now_ns is None else now_ns
    value = text.strip()
    if value.lower() == "now":
        return now
    m = _RELATIVE.match(value)
    if m and not re.fullmatch(r"[+-]?\d+(\.\d+)?", value):
        try:
            delta = parse_duration(m.group(2))
        except ValueError:
            raise ConfigError(
                f"{what} {text!r} is not a time: use ISO-8601, now, or a relative -5m/-1h"
            ) from None
        sign = -1 if m.group(1) == "-" else 1
        return now + sign * int(delta * 1_000_000_000)
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return int(float(value) * 1_000_000_000)
    # datetime stops at microseconds: take the fraction off and keep all of its digits, so
    # that a time rawcap printed (format_ns, nine digits) reads back to the nanosecond.
    frac_ns = 0
    m = _FRACTION.search(value)
    if m:
        digits = m.group(1)
        frac_ns = int(digits[:9].ljust(9, "0"))
        value = value[: m.start()] + value[m.end() :]
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is not a time: use ISO-8601 (2026-11-23T10:00:00Z), now, "
            "or a relative -5m/-1h"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.replace(microsecond=0).timestamp()) * 1_000_000_000 + frac_ns


def parse_window(
    start: str | None, end: str | None, *, now_ns: int | None = None
) -> tuple[int, int]:
    """``--from``/``--to`` -> (from_ns, to_ns); missing from = epoch 0, missing to = now."""
    now = time.time_ns() if now_ns is None else now_ns
    lo = parse_time(start, now_ns=now, what="--from") if start else 0
    hi = parse_time(end, now_ns=now, what="--to") if end else now
    if lo > hi:
        raise ConfigError(f"--from ({format_ns(lo)}) is after --to ({format_ns(hi)})")
    return lo, hi


def format_ns(ns: int) -> str:
    """ISO-8601 UTC with nanoseconds: ``2026-11-23T10:00:00.123456789Z``."""
    sec, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"
