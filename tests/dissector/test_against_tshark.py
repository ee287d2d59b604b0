"""Acceptance: rawcap's calls equal what tshark extracts from the same real capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import H2_PORT

RAWCAP = [sys.executable, "-m", "rawcap.cli"]


def tshark(pcap: Path, *args: str) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", *args],
                         capture_output=True, check=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def rawcap_calls(pcap: Path, *extra: str) -> list[dict]:
    out = subprocess.run([*RAWCAP, "dissect", "--pcap", str(pcap), "--json", "--no-store",
                          *extra], capture_output=True, check=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_http1_matches_tshark(real_pcap: Path) -> None:
    reqs = {r[0]: (r[1], r[2]) for r in tshark(real_pcap, "-Y", "http.request", "-e",
                                                "frame.number", "-e", "http.request.method",
                                                "-e", "http.request.uri")}
    expected = {(*reqs[r[0]], int(r[1])) for r in tshark(
        real_pcap, "-Y", "http.response", "-e", "http.request_in", "-e", "http.response.code")}
    calls = rawcap_calls(real_pcap)
    got = {(c["method"], c["path"], c["status"]) for c in calls if c["proto"] == "http1"}
    assert len(expected) >= 10
    assert got == expected
    assert {s for _, _, s in got} >= {200, 201, 204, 404, 500}
    assert all(c["complete"] and c["latency_ns"] > 0 for c in calls if c["proto"] == "http1")
    # keep-alive: five calls on one connection; chunked bodies were framed (sizes counted)
    ports = [c["src_port"] for c in calls if c["proto"] == "http1"]
    assert max(ports.count(p) for p in set(ports)) == 5
    chunked = [c for c in calls if c["path"].startswith("/chunked")]
    assert chunked and all(c["resp_bytes"] > 2000 for c in chunked)


def test_dns_matches_tshark(real_pcap: Path) -> None:
    expected = {(r[0], int(r[1]), int(r[2])) for r in tshark(
        real_pcap, "-Y", "dns.flags.response == 1", "-e", "dns.qry.name", "-e",
        "dns.qry.type", "-e", "dns.flags.rcode")}
    calls = rawcap_calls(real_pcap)
    got = {(c["qname"], c["qtype"], c["rcode"]) for c in calls if c["proto"] == "dns"}
    assert any(rc == 3 for _, _, rc in expected), "capture should hold an NXDOMAIN"
    assert got == expected
    assert {c["transport"] for c in calls if c["proto"] == "dns"} == {"udp", "tcp"}


def test_http2_and_grpc_match_tshark(real_pcap: Path) -> None:
    rows = tshark(real_pcap, "-d", f"tcp.port=={H2_PORT},http2", "-Y", "http2.type == 1",
                  "-e", "tcp.stream", "-e", "http2.streamid", "-e", "http2.headers.method",
                  "-e", "http2.headers.path", "-e", "http2.headers.status")
    req: dict[tuple[str, str], tuple[str, str]] = {}
    status: dict[tuple[str, str], int] = {}
    for stream, sids, method, path, st in (r + [""] * (5 - len(r)) for r in rows):
        sid = sids.split(",")[-1]
        if method:
            req[(stream, sid)] = (method, path)
        elif st:
            status[(stream, sid)] = int(st.split(",")[0])
    expected = {(*req[k], status[k]) for k in req if k in status}
    calls = rawcap_calls(real_pcap)
    got = {(c["method"], c["path"], c["status"]) for c in calls
           if c["proto"] in ("http2", "grpc")}
    assert len(expected) == 4
    assert got == expected
    grpc = [c for c in calls if c["proto"] == "grpc"]
    assert len(grpc) == 1 and grpc[0]["grpc_status"] == 5


def test_sensitive_headers_redacted(real_pcap: Path) -> None:
    calls = rawcap_calls(real_pcap)
    seen: dict[str, set[str]] = {}
    for c in calls:
        for k, v in c["req_headers"] + c["resp_headers"]:
            seen.setdefault(k.lower(), set()).add(v)
    assert seen["authorization"] == {"[redacted]"}
    assert seen["cookie"] == {"[redacted]"}
    assert seen["set-cookie"] == {"[redacted]"}
    raw = rawcap_calls(real_pcap, "--no-redact")
    assert any(v == "Bearer s3cret" for c in raw for k, v in c["req_headers"])


def test_store_and_calls_command(real_pcap: Path, tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    for _ in range(2):  # replaying the same input twice stores the same calls once
        subprocess.run([*RAWCAP, "dissect", "--pcap", str(real_pcap), "-q", "--db", str(db)],
                       check=True, capture_output=True)
    out = subprocess.run([*RAWCAP, "calls", "--db", str(db), "--json", "--proto", "dns"],
                         check=True, capture_output=True, text=True).stdout
    dns = [json.loads(line) for line in out.splitlines()]
    assert len(dns) == 7
    text = subprocess.run([*RAWCAP, "calls", "--db", str(db), "--port", "8080"],
                          check=True, capture_output=True, text=True).stdout
    assert text.count("http1") == 11 and "GET /missing -> 404" in text
    bad = subprocess.run([*RAWCAP, "calls", "--db", str(tmp_path / "nope.db")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope.db" in bad.stderr
