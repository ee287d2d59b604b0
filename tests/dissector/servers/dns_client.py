"""Send DNS queries over UDP and TCP (stdlib), like dig would."""

import random
import socket
import struct
import sys

QTYPES = {"A": 1, "AAAA": 28, "TXT": 16, "MX": 15}


def query(name: str, qtype: int) -> bytes:
    q = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)


server, port = sys.argv[1], int(sys.argv[2])
for spec in sys.argv[3:]:
    transport, name, qt = spec.split(":")
    q = query(name, QTYPES[qt])
    if transport == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(q, (server, port))
        s.recvfrom(4096)
        s.close()
    else:
        s = socket.create_connection((server, port), timeout=3)
        s.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", s.recv(2))[0]
        while n > 0:
            n -= len(s.recv(n))
        s.close()
