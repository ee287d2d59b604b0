"""DNS events: one parsed message (header + questions + answer count)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("DnsMessage", "Question")


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    is_response: bool
    opcode: int
    rcode: int
    flags: int
    questions: tuple[Question, ...]
    answers: int
    size: int
    ts_ns: int

    def __post_init__(self) -> None:
        if not 0 <= self.id <= 0xFFFF:
            raise ValueError("DNS id out of range")
