"""A stdlib DNS responder (UDP + TCP): A records for *.rawcap.test, NXDOMAIN otherwise."""

import socket
import struct
import sys
import threading


def answer(q: bytes) -> bytes:
    ident, _flags, _qd = struct.unpack_from("!HHH", q)
    off = 12
    labels = []
    while q[off]:
        n = q[off]
        labels.append(q[off + 1:off + 1 + n].decode())
        off += 1 + n
    off += 1
    qtype, _qclass = struct.unpack_from("!HH", q, off)
    question = q[12:off + 4]
    name = ".".join(labels)
    if name.endswith("rawcap.test") and not name.startswith("nx"):
        rdata = socket.inet_aton("10.231.99.1") if qtype == 1 else b""
        if qtype == 1:
            ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + rdata
            return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + ans
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
    return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question


def udp(addr: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        q, peer = s.recvfrom(4096)
        s.sendto(answer(q), peer)


def tcp_conn(c: socket.socket) -> None:
    f = c.makefile("rb")
    while True:
        hdr = f.read(2)
        if len(hdr) < 2:
            break
        q = f.read(struct.unpack("!H", hdr)[0])
        a = answer(q)
        c.sendall(struct.pack("!H", len(a)) + a)
    c.close()


def tcp(addr: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(8)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()


threading.Thread(target=udp, args=(sys.argv[1], int(sys.argv[2])), daemon=True).start()
threading.Thread(target=tcp, args=(sys.argv[1], int(sys.argv[2])), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
