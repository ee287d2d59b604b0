"""A tiny h2c (prior knowledge) server on the ``h2`` library; /grpc answers gRPC-style."""

import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def handle(sock: socket.socket) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    reqs: dict[int, dict[str, str]] = {}
    while True:
        data = sock.recv(65535)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                reqs[ev.stream_id] = {k.decode() if isinstance(k, bytes) else k:
                                      v.decode() if isinstance(v, bytes) else v
                                      for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                h = reqs.pop(ev.stream_id, {})
                path = h.get(":path", "/")
                if path.startswith("/grpc"):
                    conn.send_headers(ev.stream_id, [(":status", "200"),
                                                     ("content-type", "application/grpc")])
                    conn.send_data(ev.stream_id, b"\x00\x00\x00\x00\x02hi")
                    conn.send_headers(ev.stream_id, [("grpc-status", "5"),
                                                     ("grpc-message", "not found")],
                                      end_stream=True)
                else:
                    status = "404" if "missing" in path else "200"
                    body = (path * 3).encode()
                    conn.send_headers(ev.stream_id, [(":status", status),
                                                     ("content-length", str(len(body))),
                                                     ("set-cookie", "secret=1")])
                    conn.send_data(ev.stream_id, body, end_stream=True)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                sock.close()
                return
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
    sock.close()


srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(16)
print("ready", flush=True)
while True:
    s, _ = srv.accept()
    threading.Thread(target=handle, args=(s,), daemon=True).start()
