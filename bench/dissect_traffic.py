"""Traffic for ``bench/dissect``: a synthesized HTTP/1.1 + DNS + TLS-like pcap, and real
captures of nginx/wrk (+ dnsmasq/dig) on a veth pair between two network namespaces."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from typing import Any

__all__ = ("real_capture", "synthesize")

_ETH = bytes.fromhex("020000000001020000000002") + b"\x08\x00"
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_REC = struct.Struct("<IIII")
MSS = 1448


class Writer:
    def __init__(self, fh) -> None:
        self.fh = fh
        self.n = 0
        self.buf: list[bytes] = []
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))

    def frame(self, ts_ns: int, data: bytes) -> None:
        self.buf.append(_REC.pack(ts_ns // 1_000_000_000, ts_ns % 1_000_000_000, len(data),
                                  len(data)) + data)
        self.n += 1
        if len(self.buf) >= 4096:
            self.flush()

    def flush(self) -> None:
        self.fh.write(b"".join(self.buf))
        self.buf = []

    def tcp(self, ts: int, src: bytes, dst: bytes, sp: int, dp: int, seq: int, ack: int,
            flags: int, payload: bytes = b"") -> None:
        tcp = _TCP.pack(sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
        ip = _IP.pack(0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
        self.frame(ts, _ETH + ip + tcp + payload)

    def udp(self, ts: int, src: bytes, dst: bytes, sp: int, dp: int, payload: bytes) -> None:
        udp = _UDP.pack(sp, dp, 8 + len(payload), 0)
        ip = _IP.pack(0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, src, dst)
        self.frame(ts, _ETH + ip + udp + payload)


PATHS = ["/", "/api/v1/orders", "/api/v1/orders/1234", "/static/app.js", "/login", "/health",
         "/api/v1/users?page=2", "/missing"]


def http_conn(w: Writer, rng: random.Random, ts: int, cli: bytes, srv: bytes, sport: int,
              nreq: int) -> tuple[int, int]:
    c, s = rng.randrange(1 << 32), rng.randrange(1 << 32)
    step = 20_000
    w.tcp(ts, cli, srv, sport, 80, c, 0, 0x02)
    w.tcp(ts + step, srv, cli, 80, sport, s, c + 1, 0x12)
    w.tcp(ts + 2 * step, cli, srv, sport, 80, c + 1, s + 1, 0x10)
    c += 1
    s += 1
    ts += 3 * step
    calls = 0
    for _ in range(nreq):
        path = rng.choice(PATHS)
        method = "POST" if path == "/login" else "GET"
        body = b'{"user":"a","pass":"b"}' if method == "POST" else b""
        req = (f"{method} {path} HTTP/1.1\r\nHost: shop.local\r\nUser-Agent: wrk\r\n"
               f"Authorization: Bearer abc\r\n"
               + (f"Content-Length: {len(body)}\r\n" if body else "") + "\r\n").encode() + body
        w.tcp(ts, cli, srv, sport, 80, c, s, 0x18, req)
        c += len(req)
        ts += step
        status = 404 if path == "/missing" else 200
        size = rng.choice((120, 900, 3000, 6000, 15000))
        payload = bytes((i * 7) & 0xFF for i in range(size))
        if rng.random() < 0.3:
            chunks = b"".join(b"%x\r\n" % len(payload[i:i + 4000]) + payload[i:i + 4000] + b"\r\n"
                              for i in range(0, size, 4000))
            resp = (f"HTTP/1.1 {status} OK\r\nServer: nginx\r\nTransfer-Encoding: chunked\r\n"
                    f"Content-Type: application/json\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
        else:
            resp = (f"HTTP/1.1 {status} OK\r\nServer: nginx\r\nContent-Length: {size}\r\n"
                    f"Content-Type: application/json\r\n\r\n").encode() + payload
        for i in range(0, len(resp), MSS):
            seg = resp[i:i + MSS]
            w.tcp(ts, srv, cli, 80, sport, s, c, 0x18 if i + MSS >= len(resp) else 0x10, seg)
            s += len(seg)
            ts += 2_000
            if (i // MSS) % 2 == 1:
                w.tcp(ts, cli, srv, sport, 80, c, s, 0x10)
        w.tcp(ts, cli, srv, sport, 80, c, s, 0x10)
        ts += step
        calls += 1
    w.tcp(ts, cli, srv, sport, 80, c, s, 0x11)
    w.tcp(ts + step, srv, cli, 80, sport, s, c + 1, 0x11)
    w.tcp(ts + 2 * step, cli, srv, sport, 80, c + 1, s + 1, 0x10)
    return ts + 3 * step, calls


def dns_name(n: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"


def dns_pair(w: Writer, rng: random.Random, ts: int, cli: bytes, srv: bytes) -> int:
    ident = rng.randrange(65536)
    name = rng.choice(("api", "db", "cache", "nx-missing", "auth")) + ".svc.cluster.local"
    qtype = rng.choice((1, 28))
    q = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + dns_name(name) + \
        struct.pack("!HH", qtype, 1)
    nx = name.startswith("nx")
    r = struct.pack("!HHHHHH", ident, 0x8183 if nx else 0x8180, 1, 0 if nx else 1, 0, 0) + \
        q[12:] + (b"" if nx else b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 30, 4) + b"\n\0\0\1")
    sport = rng.randrange(1024, 65535)
    w.udp(ts, cli, srv, sport, 53, q)
    w.udp(ts + 50_000, srv, cli, 53, sport, r)
    return 1


def tls_conn(w: Writer, rng: random.Random, ts: int, cli: bytes, srv: bytes, sport: int) -> None:
    c, s = rng.randrange(1 << 32), rng.randrange(1 << 32)
    w.tcp(ts, cli, srv, sport, 443, c, 0, 0x02)
    w.tcp(ts + 1, srv, cli, 443, sport, s, c + 1, 0x12)
    c += 1
    s += 1
    hello = b"\x16\x03\x01\x02\x00" + bytes(rng.randrange(256) for _ in range(300))
    w.tcp(ts + 2, cli, srv, sport, 443, c, s, 0x18, hello)
    c += len(hello)
    for i in range(30):
        data = bytes(rng.randrange(256) for _ in range(64)) * 22
        w.tcp(ts + 3 + i, srv, cli, 443, sport, s, c, 0x10, data[:MSS])
        s += MSS
        w.tcp(ts + 3 + i, cli, srv, sport, 443, c, s, 0x10)
    w.tcp(ts + 40, cli, srv, sport, 443, c, s, 0x14)


def synthesize(path: str, packets: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    ts = 1_763_892_000_000_000_000
    calls = 0
    with open(path, "wb") as fh:
        w = Writer(fh)
        k = 0
        while w.n < packets:
            k += 1
            cli = bytes((10, 231, 1 + k % 50, 1 + k % 200))
            srv = bytes((10, 231, 100, 1 + k % 7))
            ts, n = http_conn(w, rng, ts, cli, srv, 10000 + k % 50000, rng.randrange(3, 12))
            calls += n
            for _ in range(4):
                calls += dns_pair(w, rng, ts, cli, bytes((10, 231, 200, 53)))
                ts += 100_000
            if k % 5 == 0:
                tls_conn(w, rng, ts, cli, srv, 20000 + k % 40000)
        w.flush()
    return calls



NGINX_CONF = """
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 500;
  default_type application/octet-stream;
  types {{ text/plain txt; application/json json; application/javascript js; text/css css; }}
  server {{
    listen {ip}:80;
    root {d}/www;
    gzip on; gzip_types text/plain application/json; gzip_min_length 100;
    location = / {{ return 200 "hello\\n"; }}
    location = /api/v1/orders {{ default_type application/json; return 200 "[{{\\"id\\":1}}]"; }}
    location = /login {{ return 302 /; }}
    location = /boom {{ return 500; }}
    location = /gone {{ return 410; }}
    location /static/ {{ }}
    location /api/v1/users {{ try_files /users.json =404; }}
  }}
}}
"""
WRK_LUA = """
local paths = {"/", "/api/v1/orders", "/static/app.js", "/static/big.txt", "/missing",
               "/boom", "/gone", "/api/v1/users?page=2", "/static/nope.css"}
local i = 0
request = function()
  i = i + 1
  if i % 11 == 0 then
    return wrk.format("POST", "/login", {["Content-Type"] = "application/json"},
                      '{"user":"a","pass":"b"}')
  end
  if i % 13 == 0 then
    return wrk.format("DELETE", "/boom")
  end
  local path = paths[(i % #paths) + 1]
  if i % 3 == 0 and (path == "/static/big.txt" or path == "/api/v1/users?page=2") then
    -- gzip'd on the fly: nginx answers with Transfer-Encoding: chunked
    return wrk.format("GET", path, {["Accept-Encoding"] = "gzip"})
  end
  return wrk.format("GET", path)
end
"""
#: ``--real --small``: keep-alive requests whose responses all come from ``return`` (a few
#: bytes each), so a request and its response are one packet each, ACKs piggy-backed: about
#: two packets per call, the case where per-call work is everything. (No ``/boom``: nginx
#: closes the connection after a 500, and handshakes would add a packet per call.)
WRK_LUA_SMALL = """
local paths = {"/", "/api/v1/orders", "/login", "/missing", "/gone", "/"}
local i = 0
request = function()
  i = i + 1
  if i % 17 == 0 then
    return wrk.format("POST", "/login", {["Content-Type"] = "application/json"},
                      '{"user":"a","pass":"b"}')
  end
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"""
DNS_NAMES = (["api.rawcap.test A", "api.rawcap.test AAAA", "db.rawcap.test A",
              "cache.rawcap.test A", "nx-missing.rawcap.test A", "auth.rawcap.test MX",
              "gone.rawcap.test AAAA"] * 4 + ["db.rawcap.test A +tcp", "nx2.rawcap.test A +tcp"])


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def real_capture(path: str, packets: int, timeout: float, small: bool = False) -> dict[str, Any]:
    """Capture ``packets`` frames of real HTTP/1.1 + DNS traffic into ``path`` (see above);
    ``small``: HTTP/1.1 only, every response a few bytes (``WRK_LUA_SMALL``)."""
    for tool in ("nginx", "wrk", "dnsmasq", "dig", "tcpdump", "ip"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"--real needs {tool} (Debian: nginx-light wrk dnsmasq-base "
                             "bind9-dnsutils tcpdump iproute2)")
    tag = os.getpid()
    ns_c, ns_s = f"rcbench{tag}c", f"rcbench{tag}s"
    vc, vs = f"rcb{tag}c", f"rcb{tag}s"
    n = tag % 200 + 20
    cip, sip = f"10.233.{n}.1", f"10.233.{n}.2"
    work = tempfile.mkdtemp(prefix="rawcap-bench-real-")
    procs: list[subprocess.Popen[bytes]] = []
    info: dict[str, Any] = {}

    def start(ns: str, *cmd: str, **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        procs.append(p)
        return p

    def stop(p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    try:
        _sh("ip", "netns", "add", ns_c)
        _sh("ip", "netns", "add", ns_s)
        _sh("ip", "link", "add", vc, "type", "veth", "peer", "name", vs)
        _sh("ip", "link", "set", vc, "netns", ns_c)
        _sh("ip", "link", "set", vs, "netns", ns_s)
        for ns, dev, ip in ((ns_c, vc, cip), (ns_s, vs, sip)):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        www = os.path.join(work, "www")
        os.makedirs(os.path.join(www, "static"))
        with open(os.path.join(www, "static", "app.js"), "w") as fh:
            fh.write("".join(f"function f{i}(x) {{ return x * {i}; }}\n" for i in range(150)))
        with open(os.path.join(www, "static", "big.txt"), "w") as fh:
            fh.write("".join(f"line {i} of a larger text body\n" for i in range(2000)))
        with open(os.path.join(www, "users.json"), "w") as fh:
            fh.write("[" + ",".join(f'{{"id":{i},"name":"u{i}"}}' for i in range(300)) + "]")
        for dirpath, _dirs, files in os.walk(work):  # nginx workers run unprivileged
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as fh:
            fh.write(NGINX_CONF.format(d=work, ip=sip))
        with open(os.path.join(work, "wrk.lua"), "w") as fh:
            fh.write(WRK_LUA_SMALL if small else WRK_LUA)
        start(ns_s, "nginx", "-c", conf, "-e", os.path.join(work, "error.log"),
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start(ns_s, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
              "--conf-file=/dev/null", f"--listen-address={sip}", "--bind-interfaces",
              "--port=53", "--user=root", f"--pid-file={work}/dnsmasq.pid",
              "--local=/rawcap.test/", "--host-record=api.rawcap.test,10.233.0.7,fd00::7",
              "--host-record=db.rawcap.test,10.233.0.8",
              "--host-record=cache.rawcap.test,10.233.0.9",
              "--mx-host=auth.rawcap.test,mail.rawcap.test,10",
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        dump = start(ns_c, "tcpdump", "-i", vc, "-s", "0", "-B", "32768", "-c", str(packets),
                     "-w", path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        qfile = os.path.join(work, "queries.txt")
        with open(qfile, "w") as fh:
            fh.write("\n".join(DNS_NAMES * 300) + "\n")
        deadline = time.monotonic() + timeout
        rounds = 0
        while dump.poll() is None and time.monotonic() < deadline:
            rounds += 1
            digs = [] if small else [
                start(ns_c, "dig", f"@{sip}", "+tries=1", "+time=1", "-f", qfile,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
            wrk = start(ns_c, "wrk", "-t1", f"-c{4 + rounds % 5}", "-d3s", "-s",
                        os.path.join(work, "wrk.lua"), f"http://{sip}/",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while wrk.poll() is None and dump.poll() is None:
                time.sleep(0.1)
            stop(wrk)
            for dig in digs:
                stop(dig)
        stop(dump)
        err = dump.stderr.read().decode() if dump.stderr else ""
        info = {"rounds": rounds, "tcpdump": " / ".join(
            ln.strip() for ln in err.splitlines() if "packets" in ln)}
    finally:
        for p in reversed(procs):
            stop(p)
            if p.stderr is not None:
                p.stderr.close()
        subprocess.run(["ip", "netns", "del", ns_c], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns_s], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return info

