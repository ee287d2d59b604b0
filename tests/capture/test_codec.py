"""capture.codec: none: plain batches go through capture -> Kafka -> export like zstd ones.

Two agents capture the same veth at once, one with ``--codec none`` and one with the
default (zstd); the traffic is patterned, so the zstd agent really compresses. Both ship to
the test stack's Kafka, and ``rawcap pcap export`` of each node must give the same packets.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from rawcap.stack import Stack
from schemas import decode_header
from tests.netns import VethPair

from .helpers import PY, RAWCAP, TRAFFIC, Proc, kafka_records, pcap_packets

pytestmark = pytest.mark.integration


def test_codec_none_ships_and_exports_like_zstd(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    nodes = {"none": f"plain-{run}", "zstd": f"packed-{run}"}
    env = {"RAWCAP_BOOTSTRAP": stack.bootstrap, "RAWCAP_CAPTURE_BATCH_MAX_DELAY": "0.2s"}
    started = time.time()
    with VethPair("rccodec") as net:
        srv = Proc([PY, TRAFFIC, "server", "7020"], ns=net.a)
        srv.wait_for("serving", stdout=True)
        caps = {codec: Proc([RAWCAP, "capture", "--netns", net.b.name, "--iface", net.b.iface,
                             "--node", node, "--buffer-dir", str(tmp_path / codec), "--no-procs",
                             "--codec", codec, "--ring-block-size", "64Ki",
                             "--ring-block-count", "64"], env=env)
                for codec, node in nodes.items()}
        try:
            for cap in caps.values():
                cap.wait_for("shipper connected", timeout=60)
            r = net.b.run(PY, TRAFFIC, "client", net.a.ip, "7020", "--sizes", "100,1400",
                          "--rounds", "300", check=False)
            assert r.returncode == 0, r.stderr
            time.sleep(1)
            for cap in caps.values():
                assert cap.stop() == 0, cap.text
        finally:
            srv.stop()
            for cap in caps.values():
                cap.stop()
    for cap in caps.values():
        s = cap.summary()
        assert s["unshipped"] == "0" and s["lost_packets"] == "0", cap.text
    # what went to Kafka: plain bodies from one agent, compressed ones from the other
    codecs = {}
    for codec, node in nodes.items():
        values = [v for _, v in asyncio.run(kafka_records(stack.bootstrap, node))]
        heads = [decode_header(v) for v in values]
        codecs[codec] = {h.codec for h, _ in heads}
        if codec == "none":
            assert all(len(v) - off == h.body_len for v, (h, off) in zip(values, heads, strict=True))
    assert codecs == {"none": {"none"}, "zstd": {"zstd"}}, codecs
    # rawcap pcap export reads both the same way
    exported = {}
    for codec, node in nodes.items():
        out = tmp_path / f"{codec}.pcapng"
        p = subprocess.run([RAWCAP, "--bootstrap", stack.bootstrap, "pcap", "export", "--from",
                            str(int(started) - 5), "--to", "now", "--node", node, "-o", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        exported[codec] = pcap_packets(out)
    # requests and echoes over TCP and UDP (100 and 1400 bytes), all of them
    assert len(exported["none"]) >= 4 * 2 * 300, len(exported["none"])
    assert len(exported["none"]) == len(exported["zstd"]), \
        ({k: len(v) for k, v in exported.items()}, [c.summary() for c in caps.values()])
    # each ring stamps its own time, so two packets microseconds apart may swap places
    # between the two exports (which are in time order): compare them as multisets
    assert Counter(exported["none"]) == Counter(exported["zstd"])
    assert int(caps["none"].summary()["packets"]) == len(exported["none"])
