"""Each package's ``__all__`` is a tuple naming exactly what it exports (anyio's check)."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ["schemas", "rawcap", "capture", "enrich", "archiver", "dissector", "forensics", "history",
            "rawcap.archive", "rawcap.kafka", "rawcap.pcap", "rawcap.stack", "rawcap.window"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_a_tuple_of_real_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert isinstance(exported, tuple), f"{name}.__all__ must be a tuple"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr!r}"
    public = {
        k for k, v in vars(module).items()
        if not k.startswith("_") and not isinstance(v, types.ModuleType)
        and getattr(v, "__module__", name).startswith(name)
    }
    assert public <= set(exported), f"{name} exports names not in __all__: {public - set(exported)}"
