"""Test traffic, run inside a namespace: ``server PORT`` echoes TCP and UDP on v4 and v6;
``client HOST4 HOST6 PORT [--sizes 10,1400] [--rounds N] [--udp-host H]`` talks to it.

Each message is echoed back, so every size travels in both directions. Exits 0 when every
echo came back intact.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import threading


class _TCP(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _UDP(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


class _V6Only:
    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # type: ignore[attr-defined]
        super().server_bind()  # type: ignore[misc]


class _TCP6(_V6Only, socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True


class _TCP4(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _UDP6(_V6Only, socketserver.UDPServer):
    address_family = socket.AF_INET6


def server(port: int) -> None:
    servers = [_TCP4(("0.0.0.0", port), _TCP), _TCP6(("::", port), _TCP),
               socketserver.UDPServer(("0.0.0.0", port), _UDP), _UDP6(("::", port), _UDP)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("serving", flush=True)
    threading.Event().wait()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return buf


def client(hosts: list[str], port: int, sizes: list[int], rounds: int, tcp: bool, udp: bool,
           interval: float = 0.0, random: bool = False) -> int:
    import os
    import time

    ok = True
    for r in range(rounds):
        if interval and r:
            time.sleep(interval)
        for host in hosts:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            for size in sizes:
                payload = os.urandom(size) if random else bytes((r + i) % 251 for i in range(size))
                if tcp:
                    with socket.socket(fam, socket.SOCK_STREAM) as s:
                        s.settimeout(10)
                        s.connect((host, port))
                        s.sendall(payload)
                        ok &= _recv_exact(s, size) == payload
                if udp:
                    with socket.socket(fam, socket.SOCK_DGRAM) as s:
                        s.settimeout(5)
                        s.sendto(payload, (host, port))
                        ok &= s.recv(65536) == payload
    return 0 if ok else 1


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vlan_frames(iface: str, count: int, vid: int = 100) -> int:
    """Send 802.1Q-tagged IPv4/UDP frames with a raw packet socket (no VLAN device needed)."""
    import struct

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    mac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
    for i in range(count):
        payload = bytes([i % 256]) * (20 + 50 * i)
        udp = struct.pack("!HHHH", 4000 + i, 5000, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                         socket.inet_aton("10.232.1.1"), socket.inet_aton("10.232.1.2"))
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        frame = b"\xff" * 6 + mac + struct.pack("!HH", 0x8100, vid) + b"\x08\x00" + ip + udp
        s.send(frame)
    return 0


def icmp(host: str, count: int) -> int:
    """ICMP echo requests (no ping binary here); traffic a TCP/UDP capture must not keep."""
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    for i in range(count):
        body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, i) + b"ping" * 8
        body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
        s.sendto(body, (host, 0))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("server", "client", "vlan", "icmp"))
    ap.add_argument("args", nargs="*")
    ap.add_argument("--sizes", default="10,1400")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--no-udp", action="store_true")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between rounds")
    ap.add_argument("--random", action="store_true", help="incompressible payloads")
    ap.add_argument("--comm", help="process name (prctl PR_SET_NAME) before any traffic")
    a = ap.parse_args()
    if a.comm:
        import ctypes

        ctypes.CDLL(None).prctl(15, a.comm.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    if a.mode == "icmp":
        return icmp(a.args[0], int(a.args[1]))
    if a.mode == "vlan":
        return vlan_frames(a.args[0], int(a.args[1]))
    if a.mode == "server":
        server(int(a.args[0]))
        return 0
    *hosts, port = a.args
    return client(hosts, int(port), [int(x) for x in a.sizes.split(",")], a.rounds,
                  not a.no_tcp, not a.no_udp, a.interval, a.random)


if __name__ == "__main__":
    sys.exit(main())
