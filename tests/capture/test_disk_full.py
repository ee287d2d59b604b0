"""A buffer disk that fills before the budget does: the FIFO recycles and counts, never
stops capture, never loses silently (a real 2 MiB tmpfs in a private mount namespace)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
from capture._batcher import ClosedBatch
from capture._fifo import Fifo
from schemas import encode_block_batch
from schemas.tpacket import build_block

root = sys.argv[1]
# Budget 64 MiB on a 2 MiB disk: ENOSPC comes long before the budget.
fifo = Fifo(root, "n", budget=64 << 20, segment_size=256 << 10)
for seq in range(1, 121):  # 120 x ~60 KiB incompressible = ~7 MiB offered
    blocks = [build_block([(seq * 100 + j, 1000, 3, 0, os.urandom(1000)) for j in range(60)],
                          block_size=1 << 17)]
    value = encode_block_batch(node="n", seq=seq, blocks=blocks, ifaces={3: "eth0"})
    fifo.append(ClosedBatch(seq, 60, seq * 100, seq * 100 + 59, 60 * 1000, (value,)))
    st = os.statvfs(root)
    assert fifo.total_bytes <= (st.f_blocks * st.f_frsize), fifo.total_bytes
fifo.mark_acked(3)
out = {"next_seq": fifo.next_seq, "lost": fifo.lost_batches, "lost_packets": fifo.lost_packets,
       "on_disk": [e.seq for s in fifo.segments for e in s.entries], "total": fifo.total_bytes}
fifo.close()
import shutil
shutil.rmtree(os.path.join(root, "n"))
# One segment bigger than the disk: nothing older to recycle, so batches are lost (counted).
one = Fifo(root, "m", budget=64 << 20, segment_size=16 << 20)
for seq in range(1, 61):
    blocks = [build_block([(seq * 100 + j, 1000, 3, 0, os.urandom(1000)) for j in range(60)],
                          block_size=1 << 17)]
    value = encode_block_batch(node="m", seq=seq, blocks=blocks, ifaces={3: "eth0"})
    one.append(ClosedBatch(seq, 60, seq * 100, seq * 100 + 59, 60 * 1000, (value,)))
out["one"] = {"next_seq": one.next_seq, "lost": one.lost_batches,
              "on_disk": [e.seq for s in one.segments for e in s.entries]}
one.close()
print(json.dumps(out))
"""


def test_disk_full_recycles_and_counts(tmp_path: Path) -> None:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o size=2m rawcap-full "{mnt}" && exec "$@"; ',
         "sh", sys.executable, "-c", _SCRIPT, str(mnt), str(ROOT)],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["next_seq"] == 121  # every batch got its sequence number
    on_disk = got["on_disk"]
    # The newest batches are kept, contiguous, and everything older was counted lost.
    assert on_disk and on_disk[-1] == 120 and on_disk == list(range(on_disk[0], 121))
    assert got["lost"] == on_disk[0] - 1 > 60  # ~2 MiB of ~7 MiB fits
    assert got["lost_packets"] == 60 * got["lost"]
    assert got["total"] <= 2 << 20
    assert "buffer full: recycled" in r.stderr
    one = got["one"]
    assert one["next_seq"] == 61 and one["on_disk"] == list(range(1, len(one["on_disk"]) + 1))
    assert one["lost"] == 60 - len(one["on_disk"]) > 0  # the rest: counted, and logged once
    assert r.stderr.count("buffer disk full") == 1
