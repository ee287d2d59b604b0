"""The image fixture: the image of ``image_tag`` (tests/conftest.py) unpacked for runc."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import image_cache

from .runc import RawcapImage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def image(image_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawcapImage]:
    into = tmp_path_factory.mktemp("image")
    try:
        yield RawcapImage.unpack(image_cache() / "oci", image_tag, into)
    finally:
        shutil.rmtree(into, ignore_errors=True)  # ~450 MB: not left for pytest's retention
