"""Real Ethernet/IPv4/TCP/UDP frames for tests and the benchmark (checksums not needed)."""

from __future__ import annotations

import socket
import struct

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp_frame(src: str, sport: int, dst: str, dport: int, flags: int = ACK, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + tcp


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes = b"x") -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp


def handshake(client: str, cport: int, server: str, sport: int, data: bytes = b"GET / HTTP/1.1\r\n\r\n"
              ) -> list[bytes]:
    """SYN, SYN-ACK, ACK, request, response, FIN both ways."""
    return [
        tcp_frame(client, cport, server, sport, SYN),
        tcp_frame(server, sport, client, cport, SYN | ACK),
        tcp_frame(client, cport, server, sport, ACK),
        tcp_frame(client, cport, server, sport, PSH | ACK, data),
        tcp_frame(server, sport, client, cport, PSH | ACK, b"HTTP/1.1 200 OK\r\n\r\n"),
        tcp_frame(client, cport, server, sport, FIN | ACK),
        tcp_frame(server, sport, client, cport, FIN | ACK),
    ]
