"""The image fixture: compose/image/build.sh (cached: a no-op when nothing changed, the
rawcap layer alone when a source file did), then the image unpacked for runc."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .runc import RawcapImage

REPO = Path(__file__).resolve().parents[2]


def image_cache() -> Path:
    return Path(os.environ.get("RAWCAP_STACK_CACHE") or REPO / "compose" / ".cache") / "image"


@pytest.fixture(scope="session")
def image_tag() -> str:
    """The src-<key> tag of this checkout, built if it is not (make setup builds it first)."""
    r = subprocess.run(["bash", str(REPO / "compose/image/build.sh"), "--print-tag"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


@pytest.fixture(scope="session")
def image(image_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawcapImage]:
    into = tmp_path_factory.mktemp("image")
    try:
        yield RawcapImage.unpack(image_cache() / "oci", image_tag, into)
    finally:
        shutil.rmtree(into, ignore_errors=True)  # ~450 MB: not left for pytest's retention
