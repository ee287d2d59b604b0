"""The agent runs with exactly CAP_NET_RAW + CAP_BPF + CAP_PERFMON (docs/capture.md), and
names the missing capability in one line when it has less."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netns import VethPair

from .helpers import PY, RAWCAP, TRAFFIC, Proc, read_fifo

pytestmark = pytest.mark.integration

NEEDED = "+net_raw,+bpf,+perfmon"


def _setpriv(caps: str) -> list[str]:
    # uid 0 keeps file access to root-owned files; the bounding set limits what exec grants.
    return ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all", "--"]


def test_runs_with_only_the_documented_capabilities(tmp_path: Path) -> None:
    with VethPair("rccap") as net:
        srv = Proc([PY, TRAFFIC, "server", "7030"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        try:
            probe = net.b.run(*_setpriv(NEEDED), "grep", "CapEff", "/proc/self/status")
            assert probe.stdout.split()[1] == format((1 << 13) | (1 << 38) | (1 << 39), "016x")
            cap = Proc([*_setpriv(NEEDED), RAWCAP, "capture", "--iface", net.b.iface, "--node", "caps",
                        "--no-kafka", "--buffer-dir", str(tmp_path)], ns=net.b)
            cap.wait_for("capture running")
            r = net.b.run(PY, TRAFFIC, "client", net.a.ip, "7030", "--sizes", "100", check=False)
            assert r.returncode == 0, r.stderr
            assert cap.stop() == 0, cap.text
        finally:
            srv.stop()
        # TCP handshake + data + echo + close, and UDP out and back
        assert int(cap.summary()["packets"]) >= 8
        assert sum(b.header.count for b in read_fifo(tmp_path / "caps")) == int(cap.summary()["packets"])

        for caps, missing in (("+net_raw,+perfmon", "CAP_BPF"), ("+bpf,+perfmon", "CAP_NET_RAW")):
            r = net.b.run(*_setpriv(caps), RAWCAP, "capture", "--iface", net.b.iface, "--no-kafka",
                          "--buffer-dir", str(tmp_path), "--duration", "1", check=False)
            assert r.returncode == 2
            assert r.stderr.strip().splitlines()[-1].startswith("rawcap: error:")
            assert missing in r.stderr.strip().splitlines()[-1]
            assert "Traceback" not in r.stderr
