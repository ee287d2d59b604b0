"""``NEED_DATA``: what ``next_event()`` returns when the buffered bytes hold no whole event."""

from __future__ import annotations

from typing import Final

__all__ = ("NEED_DATA", "NeedData")


class NeedData:
    """Singleton sentinel type (compare with ``is``)."""

    __slots__ = ()
    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
