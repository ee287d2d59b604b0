"""Fixtures for the dissector tests: one real capture (netns + veth + tcpdump) per session."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .netlab import HERE, PY, NetLab

HTTP_PORT, H2_PORT, DNS_PORT = 8080, 8081, 53

CURL_REQUESTS = [
    # one curl = one keep-alive connection with several requests
    ["-s", "-o", "/dev/null", "{u}/", "-o", "/dev/null", "{u}/items/7", "-o", "/dev/null",
     "{u}/chunked", "-o", "/dev/null", "{u}/missing", "-o", "/dev/null", "{u}/boom"],
    ["-s", "-o", "/dev/null", "-X", "POST", "-d", "x=1&y=2", "{u}/echo"],
    ["-s", "-o", "/dev/null", "-X", "PUT", "-H", "Authorization: Bearer s3cret",
     "-H", "Cookie: a=b", "--data-binary", "@/etc/hostname", "{u}/echo"],
    ["-s", "-o", "/dev/null", "-X", "DELETE", "{u}/items/9"],
    ["-s", "-o", "/dev/null", "-I", "{u}/"],
    ["-s", "-o", "/dev/null", "{u}/chunked?page=2", "-o", "/dev/null", "{u}/items/abc?q=1"],
]
H2_REQUESTS = [
    # one URL per curl: curl 7.88 fails reusing a prior-knowledge h2c connection (exit 16)
    ["-s", "--http2-prior-knowledge", "-o", "/dev/null", "{u}/a"],
    ["-s", "--http2-prior-knowledge", "-o", "/dev/null", "{u}/b/missing"],
    ["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-H", "Authorization: x", "{u}/c?x=1"],
    ["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-X", "POST", "-H",
     "content-type: application/grpc", "--data-binary", "@/etc/hostname",
     "{u}/grpc/pkg.Svc/Method"],
]
DNS_QUERIES = ["udp:www.rawcap.test:A", "udp:api.rawcap.test:AAAA", "udp:nx1.rawcap.test:A",
               "udp:example.invalid:A", "tcp:db.rawcap.test:A", "tcp:nx2.rawcap.test:TXT",
               "udp:mail.rawcap.test:MX"]


@pytest.fixture(scope="session")
def real_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HTTP/1.1 (aiohttp), h2c (h2), DNS (stdlib) between two namespaces, captured by tcpdump."""
    out = tmp_path_factory.mktemp("cap") / "real.pcap"
    with NetLab("t") as lab:
        srv = str(HERE / "servers")
        lab.start(lab.ns_s, PY, f"{srv}/http1_server.py", lab.server_ip, str(HTTP_PORT),
                  ready=b"ready")
        lab.start(lab.ns_s, PY, f"{srv}/h2_server.py", lab.server_ip, str(H2_PORT),
                  ready=b"ready")
        lab.start(lab.ns_s, PY, f"{srv}/dns_server.py", lab.server_ip, str(DNS_PORT),
                  ready=b"ready")
        dump = lab.capture(out)
        u1 = f"http://{lab.server_ip}:{HTTP_PORT}"
        for args in CURL_REQUESTS:
            lab.run(lab.ns_c, "curl", *[a.format(u=u1) for a in args])
        u2 = f"http://{lab.server_ip}:{H2_PORT}"
        for args in H2_REQUESTS:
            lab.run(lab.ns_c, "curl", *[a.format(u=u2) for a in args])
        lab.run(lab.ns_c, PY, f"{srv}/dns_client.py", lab.server_ip, str(DNS_PORT),
                *DNS_QUERIES)
        time.sleep(1.0)
        lab.stop(dump)
    return out
