"""Historical investigations: trends and anomalies over calls and flows kept as Parquet in
the archive (``rawcap archive tables``), or on Kafka for recent ranges.

The engine is Polars (imported when a command runs); the rows' columns and the bucket
layout come from :mod:`schemas.tables`, the hourly roll-ups' from :mod:`schemas.rollups`.
See docs/history.md.
"""

from ._anomalies import Finding, find_anomalies, find_anomalies_rollups, robust_z
from ._source import (
    Source,
    archive_frame,
    choose_source,
    kafka_frame,
    object_keys,
    rollup_frames,
    storage_options,
)
from ._trends import BY, METRICS, Filters, TrendQuery, trends

__all__ = (
    "BY",
    "METRICS",
    "Filters",
    "Finding",
    "Source",
    "TrendQuery",
    "archive_frame",
    "choose_source",
    "find_anomalies",
    "find_anomalies_rollups",
    "kafka_frame",
    "object_keys",
    "robust_z",
    "rollup_frames",
    "storage_options",
    "trends",
)
