"""rawcap.malloc: the allocator settings and the trim that gives one-off peaks back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

# In a fresh interpreter (the allocator state of the test process is not ours to change):
# tune as the agent does, hold 96 MiB in 1 MiB buffers (from the heap, not mmap, once
# tuned), free them, and report RssAnon (KiB) before and after trim().
_PROBE = """
import sys
from rawcap.malloc import trim, tune
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
tuned = tune()
bufs = [bytearray(b"x" * (1 << 20)) for _ in range(96)]
keep = [bytes(8) for _ in range(1000)]  # small live objects after the buffers
peak = anon()
del bufs
freed = anon()
released = trim()
print(tuned, released, peak, freed, anon())
"""


def _probe(env: dict[str, str]) -> tuple[str, str, int, int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=50).stdout.split()
    return out[0], out[1], int(out[2]), int(out[3]), int(out[4])


def test_trim_returns_freed_heap_that_tune_keeps() -> None:
    tuned, released, peak, freed, after = _probe({"RAWCAP_TEST_HOOKS": ""})
    assert tuned == "True" and released == "True"
    assert peak > 96 * 1024
    assert freed > peak - 16 * 1024, "tuned glibc keeps freed buffers below TRIM_BYTES resident"
    assert after < freed - 64 * 1024, (peak, freed, after)


def test_no_mallopt_hook_leaves_the_allocator_alone() -> None:
    tuned, released, _peak, _freed, _after = _probe({"RAWCAP_TEST_HOOKS": "no-mallopt"})
    assert tuned == "False" and released == "False"
