"""Prometheus metrics of the capture agent, in a registry of its own.

A private registry keeps tests (several agents in one process) from colliding and keeps
``/metrics`` to what an operator of this agent needs. Names are listed in docs/capture.md.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

__all__ = ("Metrics",)


class Metrics:
    def __init__(self, node: str) -> None:
        self._server: tuple[Any, Any] | None = None
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
        self.ship_lag_batches = g("rawcap_capture_ship_lag_batches", "batches written but not acknowledged")
        self.ship_lag_seconds = g("rawcap_capture_ship_lag_seconds", "age of the oldest unacknowledged batch")
        self.procs_events = c("rawcap_capture_procs_events", "process-context records published")
        self.procs_dropped = c("rawcap_capture_procs_dropped",
                               "process-context records dropped: the publisher was behind")
        self.filter_version = g("rawcap_capture_filter_version", "version of the applied capture filter")
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

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread of prometheus_client)."""
        self._server = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        """Stop the ``/metrics`` server and join its thread."""
        server = self._server
        if server:
            server[0].shutdown()
            server[0].server_close()
            server[1].join(5)
            self._server = None
