"""Trend output: a terminal table with a sparkline per row, JSON lines, a PNG chart."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from typing import IO, Any, Final

__all__ = ("COLUMN", "format_value", "series", "sparkline", "trend_json", "trend_png", "trend_table")

BARS: Final = "▁▂▃▄▅▆▇█"
#: metric name on the command line -> column in the result
COLUMN: Final = {"error-rate": "error_rate"}
COUNTS: Final = ("requests", "errors", "bytes", "flows")


def _col(metric: str) -> str:
    return COLUMN.get(metric, metric)


def sparkline(values: Sequence[float | None], width: int = 48) -> str:
    """One character per value (values averaged down to ``width``); a gap is a space."""
    vals = list(values)
    if len(vals) > width:
        step = len(vals) / width
        out: list[float | None] = []
        for i in range(width):
            chunk = [v for v in vals[int(i * step):int((i + 1) * step)] if v is not None]
            out.append(sum(chunk) / len(chunk) if chunk else None)
        vals = out
    present = [v for v in vals if v is not None]
    if not present:
        return " " * len(vals)
    lo, hi = min(present), max(present)
    span = hi - lo
    return "".join(
        " " if v is None else BARS[0 if span == 0 else min(7, int((v - lo) / span * 7.999))]
        for v in vals
    )


def format_value(metric: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if metric == "error-rate":
        return f"{v * 100:.2f}%"
    if metric in ("p50", "p99"):
        return f"{v:.1f}ms"
    if metric == "bytes":
        for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if v >= div:
                return f"{v / div:.1f}{unit}"
        return f"{int(v)}B"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.1f}{unit}"
    return str(int(v))


def series(per: Any, group: str, metric: str, buckets: Sequence[int]) -> list[float | None]:
    """The values of one group and metric at each bucket (counts 0, others None when absent)."""
    rows = per.filter(per["group"] == group)
    got = dict(zip(rows["bucket"].to_list(), rows[_col(metric)].to_list(), strict=True))
    empty = 0 if metric in COUNTS else None
    out = []
    for b in buckets:
        v = got.get(b)
        out.append(empty if v is None else v)
    return out


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _groups(total: Any, metrics: Sequence[str], top: int) -> list[str]:
    key = next((_col(m) for m in ("requests", "bytes", "flows") if _col(m) in total.columns), "group")
    ordered = total.sort([key, "group"], descending=[True, False], nulls_last=True)
    return ordered["group"].to_list()[:top] if top else ordered["group"].to_list()


def trend_table(out: IO[str], per: Any, total: Any, metrics: Sequence[str], buckets: Sequence[int],
                by: str, top: int, width: int = 48) -> None:
    groups = _groups(total, metrics, top)
    gw = max([len(by), *(len(g) for g in groups)]) if groups else len(by)
    gw = min(gw, 48)
    head = (f"{by:<{gw}}  {'metric':<10} {'overall':>9} {'min':>9} {'max':>9}  "
            f"{_iso(buckets[0])} .. {_iso(buckets[-1])} ({len(buckets)} buckets)")
    out.write(head + "\n")
    for g in groups:
        trow = total.filter(total["group"] == g)
        for i, m in enumerate(metrics):
            vals = series(per, g, m, buckets)
            present = [v for v in vals if v is not None]
            overall = trow[_col(m)][0] if _col(m) in trow.columns and len(trow) else None
            label = g[:gw] if i == 0 else ""
            out.write(f"{label:<{gw}}  {m:<10} {format_value(m, overall):>9} "
                      f"{format_value(m, min(present) if present else None):>9} "
                      f"{format_value(m, max(present) if present else None):>9}  "
                      f"{sparkline(vals, width)}\n")
    if len(total) > len(groups):
        out.write(f"({len(total) - len(groups)} more groups: --top 0 shows all, --json has every row)\n")


def trend_json(out: IO[str], per: Any, metrics: Sequence[str], by: str, every_s: float) -> None:
    """One JSON object per bucket and group: ``{"t", "every_s", "by", "group", metric...}``."""
    cols = [_col(m) for m in metrics]
    for row in per.sort(["bucket", "group"]).iter_rows(named=True):
        doc: dict[str, Any] = {"t": _iso(row["bucket"]), "every_s": every_s, "by": by, "group": row["group"]}
        for m, c in zip(metrics, cols, strict=True):
            v = row.get(c)
            doc[m] = (0 if m in COUNTS else None) if v is None else v
        out.write(json.dumps(doc) + "\n")


def trend_png(path: str, per: Any, total: Any, metrics: Sequence[str], buckets: Sequence[int], by: str,
              title: str, top: int = 8) -> None:
    """A chart for an incident report: one panel per metric, one line per group (top N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    groups = _groups(total, metrics, top)
    times = [dt.datetime.fromtimestamp(b / 1e9, dt.UTC) for b in buckets]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(11, 2.6 * len(metrics) + 0.8), sharex=True,
                             squeeze=False)
    for ax, m in zip(axes[:, 0], metrics, strict=True):
        for g in groups:
            vals = [math.nan if v is None else v for v in series(per, g, m, buckets)]
            if m == "error-rate":
                vals = [v * 100 for v in vals]
            ax.plot(times, vals, label=g, linewidth=1.4)
        unit = {"error-rate": " (%)", "p50": " (ms)", "p99": " (ms)", "bytes": " (bytes)"}.get(m, "")
        ax.set_ylabel(m + unit)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0, 0].set_title(title, fontsize=11)
    axes[0, 0].legend(title=by, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    locator = mdates.AutoDateLocator(tz=dt.UTC)
    axes[-1, 0].xaxis.set_major_locator(locator)
    axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC))
    axes[-1, 0].set_xlabel("UTC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
