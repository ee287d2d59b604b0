from __future__ import annotations

import pytest

from rawcap.timeparse import format_ns, parse_time, parse_window
from schemas.errors import ConfigError

NOW = 1_763_892_000_000_000_000  # 2025-11-23T10:00:00Z


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("-5m", NOW - 300 * 10**9),
    ("-1h30m", NOW - 5400 * 10**9),
    ("+30s", NOW + 30 * 10**9),
    ("2025-11-23T10:00:00Z", NOW),
    ("2025-11-23T11:00:00+01:00", NOW),
    ("2025-11-23 10:00:00.5", NOW + 500_000_000),
    ("2025-11-23T10:00:00.123456789Z", NOW + 123_456_789),
    ("2025-11-23T10:00:00,000000001+00:00", NOW + 1),
    ("2025-11-23T11:00:00.25+01:00", NOW + 250_000_000),
    ("1969-12-31T23:59:59.5Z", -500_000_000),
    ("1763892000", NOW),
])
def test_times(text: str, expected: int) -> None:
    assert parse_time(text, now_ns=NOW) == expected


def test_bad_time_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"--from .yesterday-ish. is not a time"):
        parse_time("yesterday-ish", what="--from")


def test_window_order() -> None:
    assert parse_window("-5m", "now", now_ns=NOW) == (NOW - 300 * 10**9, NOW)
    with pytest.raises(ConfigError, match=r"--from .* is after --to"):
        parse_window("now", "-5m", now_ns=NOW)


def test_format_ns() -> None:
    assert format_ns(NOW + 123) == "2025-11-23T10:00:00.000000123Z"


def test_printed_times_read_back_exactly() -> None:
    for ns in (NOW, NOW + 1, NOW + 999_999_999, NOW + 123_456_789):
        assert parse_time(format_ns(ns)) == ns
