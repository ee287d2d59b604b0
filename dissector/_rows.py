"""``rawcap.calls`` version-2 rows of the dissector's calls: ``schemas.calls.call_rows``
(msgpack over each call's values, the reference) or its compiled twin
``dissector/_crows.c`` (the same bytes, ~10x less time: packing was a tenth of a replay),
when it is built and the test hook ``no-ctwins`` is off; :data:`row` packs one call."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from schemas.calls import FIELDS, Call, call_rows

__all__ = ("COMPILED", "row", "rows")


def _one(call: Call) -> bytes:
    return call_rows([call])[0]


rows: Callable[[Sequence[Call]], list[bytes]]
row: Callable[[Call], bytes]
try:
    from rawcap.hooks import hook

    if hook("no-ctwins"):
        raise ImportError("the test hook no-ctwins is on")
    # by its full name: the C module (no Python source) is no import of this package
    _crows = importlib.import_module("dissector._crows")
    pack_rows, pack_row, setup = _crows.pack_rows, _crows.pack_row, _crows.setup
except (ImportError, AttributeError):  # not built, or built from an older source
    COMPILED = False
    rows, row = call_rows, _one
else:
    setup(Call, FIELDS, _one)
    COMPILED = True
    rows, row = pack_rows, pack_row
