"""Structured logs: ``key=value`` text for terminals, one JSON object per line for
collectors (``log.format: json``). Everything goes to stderr; stdout belongs to data."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ("setup_logging",)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "text", *, service: bool = True) -> None:
    """Log to stderr. ``service=False`` is for one-shot commands (export, consume, snapshot):
    they report a failure as one ``rawcap: error:`` line with its context, so the Kafka
    client's own error lines (``Unable connect to ...``), which would come first and say the
    same, are kept out unless the level is ``debug``. A service (capture, enrich, archive,
    ...) keeps them: while aiokafka retries through an outage they are the live signal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries are chatty at info; their warnings still come through.
    for noisy in ("aiokafka", "kafka", "kubernetes_asyncio", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not service and level.lower() != "debug":
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
