"""Prometheus metrics of the archiver, in a registry of its own (names in docs/archiver.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ("Metrics",)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.bytes_written = Counter(
            "rawcap_archive_bytes_written", "bytes of data objects written", registry=r
        )
        self.objects_written = Counter("rawcap_archive_objects_written", "data objects written", registry=r)
        self.batches_written = Counter("rawcap_archive_batches_written", "batches archived", registry=r)
        self.packets_written = Counter("rawcap_archive_packets_written", "packets archived", registry=r)
        self.index_written = Counter(
            "rawcap_archive_index_objects_written", "index objects written", registry=r
        )
        self.upload_seconds = Histogram(
            "rawcap_archive_upload_seconds",
            "time to write one data object and its index (successful attempts)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.errors = Counter(
            "rawcap_archive_errors", "failed store requests (each retried)", ("op",), registry=r
        )
        self.skipped = Counter(
            "rawcap_archive_batches_skipped", "batches found already archived after a restart", registry=r
        )
        self.adopted = Counter(
            "rawcap_archive_objects_adopted",
            "data objects without index completed after a restart",
            registry=r,
        )
        self.dlq = Counter("rawcap_archive_dlq_batches", "corrupt batches sent to rawcap.dlq", registry=r)
        self.commits = Counter("rawcap_archive_commits", "offset commits", registry=r)
        self.lag_records = Gauge(
            "rawcap_archive_lag_records",
            "records in Kafka not yet archived and committed",
            ("partition",),
            registry=r,
        )
        self.lag_seconds = Gauge(
            "rawcap_archive_lag_seconds", "age of the oldest batch not yet durably archived", registry=r
        )
        self.buffered_bytes = Gauge(
            "rawcap_archive_buffered_bytes", "bytes held in open buffers and uploads in flight", registry=r
        )
        self.retention_deleted = Counter(
            "rawcap_archive_retention_deleted_objects", "objects deleted by archive.retention", registry=r
        )
        self._server: object = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        self._server = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        server = self._server
        if server:
            server[0].shutdown()  # type: ignore[index]
            server[0].server_close()  # type: ignore[index]
            self._server = None
