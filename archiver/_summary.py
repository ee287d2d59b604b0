"""What an archiver run did (its last stderr line), and how its errors reach the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.errors import RawcapError

__all__ = ("Summary", "one_error")


@dataclass
class Summary:
    objects: int = 0
    batches: int = 0
    packets: int = 0
    bytes: int = 0
    skipped: int = 0
    adopted: int = 0
    dlq: int = 0
    errors: int = 0
    commits: int = 0

    def line(self) -> str:
        return "archive summary: " + " ".join(f"{k}={v}" for k, v in vars(self).items())


def one_error(eg: BaseExceptionGroup[Any]) -> BaseException:
    """The first rawcap error inside a task group's exception group (else the group): the
    CLI prints a rawcap error as one line."""
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = one_error(exc)
        if isinstance(exc, RawcapError):
            return exc
    return eg
