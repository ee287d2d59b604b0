"""The text lines of ``rawcap dissect`` (and ``rawcap calls``): :func:`format_call`, the
reference, and :func:`lines` over a batch: its compiled twin ``dissector/_ctext.c`` (the
same text; ``tests/dissector/test_text.py``) when it is built and the test hook ``no-ctwins`` is
not set, else :func:`py_lines`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from schemas.calls import Call

__all__ = ("COMPILED", "format_call", "lines", "py_lines")


def _end(ip: str, port: int, workload: str, namespace: str) -> str:
    """``10.1.0.5:40000``, with the workload when known: ``10.1.0.5:40000 (shop/web-1)``,
    ``10.96.0.6:80 (shop/service/api)``, ``10.0.0.1:10250 (node/n1)``."""
    if not workload:
        return f"{ip}:{port}"
    return f"{ip}:{port} ({namespace}/{workload})" if namespace else f"{ip}:{port} ({workload})"


_seconds: dict[int, str] = {}


def _format_ts(ns: int) -> str:
    """``rawcap.timeparse.format_ns`` (ISO-8601 UTC, nanoseconds) with the seconds part
    cached: calls come in time order, so most share their second with the previous one."""
    sec, frac = divmod(ns, 1_000_000_000)
    text = _seconds.get(sec)
    if text is None:
        if len(_seconds) >= 4096:
            _seconds.clear()
        text = _seconds[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:09d}Z"


def format_call(c: Call) -> str:
    """One call as a human line: time, protocol, client > server (with workloads), summary,
    latency, and why it is incomplete."""
    lat = f"{c.latency_ns / 1e6:.3f}ms" if c.latency_ns else "-"
    flag = "" if c.complete else f"  [incomplete: {c.error}]"
    ts = c.req_ts_ns or c.resp_ts_ns
    return (f"{_format_ts(ts) if ts else '-'} {c.proto:5} "
            f"{_end(c.src_ip, c.src_port, c.src_workload, c.src_namespace)} > "
            f"{_end(c.dst_ip, c.dst_port, c.dst_workload, c.dst_namespace)} "
            f"{c.summary()} {lat}{flag}")


def py_lines(calls: Sequence[Call]) -> str:
    """Every call's :func:`format_call` line, each followed by a newline."""
    return "".join([format_call(c) + "\n" for c in calls])


lines: Callable[[Sequence[Call]], str]
try:
    from rawcap.hooks import hook

    if hook("no-ctwins"):
        raise ImportError("the test hook no-ctwins is on")
    # by its full name: the C module (no Python source) is no import of this package
    _ctext = importlib.import_module("dissector._ctext")
except ImportError:
    COMPILED = False
    lines = py_lines
else:
    _ctext.setup(Call, format_call)
    COMPILED = True
    lines = _ctext.lines
