"""Prometheus metrics of the capture agent, in a registry of its own, and its health.

A private registry keeps tests (several agents in one process) from colliding and keeps
``/metrics`` to what an operator of this agent needs. Names are listed in docs/capture.md.
The same port answers ``/ready`` and ``/live`` (200 or 503 with a one-line reason), from
the checks the agent hands to :meth:`Metrics.serve`: Kubernetes probes and scripts ask there.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ("Check", "Metrics")

#: A health check: (healthy, one-line reason).
Check = Callable[[], tuple[bool, str]]


def _always() -> tuple[bool, str]:
    return True, "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    checks: dict[str, Check]

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can wait on DNS for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            code, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)
        elif path in self.server.checks:
            ok, reason = self.server.checks[path]()
            code, ctype, body = (200 if ok else 503), "text/plain; charset=utf-8", (reason + "\n").encode()
        else:
            code, ctype, body = 404, "text/plain; charset=utf-8", b"not found: /metrics, /ready, /live\n"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: quiet
        pass


class Metrics:
    def __init__(self, node: str) -> None:
        self._server: tuple[_Server, threading.Thread] | None = None
        r = self.registry = CollectorRegistry()
        lbl = ("node",)

        def c(name: str, doc: str) -> Counter:
            return Counter(name, doc, lbl, registry=r).labels(node)

        def g(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, lbl, registry=r).labels(node)

        self.packets = c("rawcap_capture_packets", "packets captured into batches")
        self.bytes = c("rawcap_capture_bytes", "raw ring bytes captured into batches")
        self.kernel_packets = g("rawcap_capture_kernel_packets", "packets the socket saw (PACKET_STATISTICS)")
        self.kernel_drops = g("rawcap_capture_kernel_drops", "packets the kernel dropped: ring full")
        self.kernel_freezes = g("rawcap_capture_kernel_freezes", "ring queue freezes")
        self.filter_rejected = g("rawcap_capture_filter_rejected", "TCP/UDP packets the eBPF filter rejected")
        self.batches_written = c("rawcap_capture_batches_written", "batches appended to the node FIFO")
        self.batches_shipped = c("rawcap_capture_batches_shipped", "batches acknowledged by Kafka")
        self.ship_errors = c("rawcap_capture_ship_errors", "producer failures (each followed by a resume)")
        self.buffer_bytes = g("rawcap_capture_buffer_bytes", "bytes on disk in the node FIFO")
        self.memory_bytes = g("rawcap_capture_memory_bytes",
                              "unacknowledged batch bytes the FIFO holds in memory")
        self.lost_batches = g("rawcap_capture_lost_batches", "batches recycled before Kafka took them")
        self.lost_packets = g("rawcap_capture_lost_packets", "packets recycled before Kafka took them")
        self.lost_bytes = g("rawcap_capture_lost_bytes", "raw bytes recycled before Kafka took them")
        # This run's split of the packets the socket saw (docs/capture.md, "Loss"):
        # kernel_packets = kernel_drops + shipped + recycled + unshipped (+ what the ring
        # thread has not batched yet).
        self.run_shipped_packets = g("rawcap_capture_shipped_packets",
                                     "packets of this run's batches Kafka acknowledged")
        self.run_lost_packets = g("rawcap_capture_recycled_packets",
                                  "packets of this run lost before Kafka took them (recycled, disk full)")
        self.run_unshipped_packets = g("rawcap_capture_unshipped_packets",
                                       "packets of this run in the buffer, not yet acknowledged")
        self.ship_lag_batches = g("rawcap_capture_ship_lag_batches", "batches written but not acknowledged")
        self.ship_lag_seconds = g("rawcap_capture_ship_lag_seconds", "age of the oldest unacknowledged batch")
        self.procs_events = c("rawcap_capture_procs_events", "process-context records published")
        self.procs_dropped = c("rawcap_capture_procs_dropped",
                               "process-context records dropped: the publisher was behind")
        self.filter_version = g("rawcap_capture_filter_version", "version of the applied capture filter")
        self.ship_leader = g("rawcap_capture_ship_leader",
                             "broker id leading the rawcap.packets partition this node writes to")
        self.ship_leader_changes = c("rawcap_capture_ship_leader_changes",
                                     "times that partition's leader moved while shipping (failovers)")
        self.rss_anon = g("rawcap_capture_rss_anon_bytes",
                          "agent's resident anonymous memory (heap, buffers: what the memory limit is for)")
        self.rss_file = g("rawcap_capture_rss_file_bytes",
                          "agent's resident file-backed memory (libraries such as bcc's LLVM, the "
                          "TPACKET ring): shared with the page cache")

    def update_rss(self, status: str = "/proc/self/status") -> None:
        """Set the two RSS gauges from the kernel's accounting of this process."""
        with open(status) as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    self.rss_anon.set(int(line.split()[1]) * 1024)
                elif line.startswith("RssFile:"):
                    self.rss_file.set(int(line.split()[1]) * 1024)

    def serve(self, port: int, addr: str = "0.0.0.0", *, ready: Check = _always,
              live: Check = _always) -> None:
        """Expose ``/metrics``, ``/ready`` and ``/live`` on ``port`` (a daemon thread)."""
        server = _Server((addr, port), _Handler)
        server.registry = self.registry
        server.checks = {"/ready": ready, "/live": live}
        thread = threading.Thread(target=server.serve_forever, name="rawcap-metrics", daemon=True)
        thread.start()
        self._server = (server, thread)

    def close(self) -> None:
        """Stop the ``/metrics`` server and join its thread."""
        server = self._server
        if server:
            server[0].shutdown()
            server[0].server_close()
            server[1].join(5)
            self._server = None
