"""``rawcap anomalies`` over eight days of calls and flows in real MinIO: nothing flagged on
a steady baseline; a new peer, an error-rate spike, a latency shift and a volume drop found
when injected, each with its numbers and a pcap export command rawcap itself accepts."""

from __future__ import annotations

import json
import random
import shlex
import uuid
from collections.abc import Callable
from typing import Any

import obstore
import pytest
from obstore.store import S3Store

from archiver._tables import to_parquet
from history import robust_z
from rawcap.cli import _fix_time_args, build_parser
from rawcap.timeparse import format_ns
from schemas import topics
from schemas.calls import Call
from schemas.flows import FlowRecord
from schemas.rollups import rollup_key, rollups
from schemas.tables import call_rows, flow_rows, frame, table_key
from tests.archiver.helpers import rawcap

from .conftest import stack_env
from .helpers import CLIENTS, HOUR_NS, SERVERS, Server, make_call, make_flow

pytestmark = pytest.mark.integration

DAYS = 8
LEDGER = Server("shop", "ledger", "10.9.9.9", 9000, (("POST", "/entries"),))

#: hour index (from the start of the data) -> what changes; the window is the last 24 hours
NEW_PEER, ERROR_SPIKE, SLOW, DROP = DAYS * 24 - 20, DAYS * 24 - 15, DAYS * 24 - 10, DAYS * 24 - 6


def generate(start_ns: int, inject: bool) -> tuple[list[Call], list[FlowRecord]]:
    rng = random.Random(11)
    calls, flows = [], []
    for h in range(DAYS * 24):
        hour_ns = start_ns + h * HOUR_NS
        shape = 1.2 if h % 24 in range(8, 20) else 1.0
        for server in SERVERS:
            n = int((60 if server.service == "redis" else 120) * shape)  # >= 50 per endpoint: p99 judged
            if inject and server.service == "redis" and DROP <= h < DROP + 4:
                n = 3
            for i in range(n):
                ts = hour_ns + int((i + rng.random()) * HOUR_NS / n)
                op = i % 2 if server.ops else None
                fail = i % 100 == 7
                lat = 20.0
                if inject and server.service == "payments" and h == ERROR_SPIKE and op == 1:
                    fail = i % 5 < 3
                if inject and server.service == "cart" and SLOW <= h < SLOW + 3 and op == 0:
                    lat = 150.0
                client = CLIENTS[i % len(CLIENTS)]
                calls.append(make_call(rng, ts, f"node-{i % 4}", server, client, fail=fail, latency_ms=lat,
                                       op=op))
                c = calls[-1]
                flows.append(make_flow(ts, c.node, server, client, c.src_port, c.req_bytes + c.resp_bytes))
        if inject and h == NEW_PEER:
            for i in range(30):
                ts = hour_ns + i * HOUR_NS // 30
                calls.append(make_call(rng, ts, "node-1", LEDGER, CLIENTS[0], op=0))
                c = calls[-1]
                flows.append(make_flow(ts, c.node, LEDGER, CLIENTS[0], c.src_port, 500))
    return calls, flows


def write_archive(store: S3Store, start_ns: int, calls: list[Call], flows: list[FlowRecord],
                  rolled: bool = True) -> int:
    """One object per kind and hour, in the layout rawcap archive tables writes, and (``rolled``)
    its hourly roll-ups, made by the writer's function."""
    objects = 0
    for kind, topic, recs, ts_of, rows in (
            ("calls", topics.CALLS, calls, lambda c: c.ts_ns, call_rows),
            ("flows", topics.FLOWS, flows, lambda f: max(f.interval_ns, f.first_ns), flow_rows)):
        by_hour: dict[int, list[Any]] = {}
        for off, rec in enumerate(recs):
            by_hour.setdefault(ts_of(rec) // HOUR_NS, []).append((0, off, rec))
        for hour, items in sorted(by_hour.items()):
            key = table_key(kind, hour, topic, 0, items[0][1], items[-1][1])
            df = frame(kind, rows(items))
            obstore.put(store, key, to_parquet(df, 100_000))
            objects += 1
            for rk, r in (rollups(kind, df).items() if rolled else ()):
                obstore.put(store, rollup_key(key, rk), to_parquet(r, 100_000, rollup=True))
    return objects


@pytest.fixture(scope="module")
def archives(stack: Any) -> Callable[..., tuple[dict[str, str], int]]:
    start = (__import__("time").time_ns() // HOUR_NS - 6 - DAYS * 24) * HOUR_NS
    made: dict[tuple[bool, bool], tuple[dict[str, str], int]] = {}

    def get(inject: bool, rolled: bool = True) -> tuple[dict[str, str], int]:
        if (inject, rolled) not in made:
            prefix = f"an{uuid.uuid4().hex[:8]}"
            store = S3Store(stack.bucket, prefix=prefix, **stack.s3_store_kwargs())
            write_archive(store, start, *generate(start, inject), rolled=rolled)
            made[(inject, rolled)] = (stack_env(stack, prefix), start)
        return made[(inject, rolled)]

    return get


ROLLUPS = "calls from hourly roll-ups, flows from hourly roll-ups"
EXACT = "calls from raw rows (--exact)"


def _run(env: dict[str, str], start: int, *extra: str, source: str = "") -> list[dict[str, Any]]:
    """The findings as JSON; ``source``: what the source line must say (default: roll-ups,
    or raw rows with --exact)."""
    end = start + DAYS * 24 * HOUR_NS
    r = rawcap("anomalies", "--json", "--from", format_ns(end - 24 * HOUR_NS), "--to", format_ns(end),
               "--baseline", format_ns(start), *extra, env=env, timeout=180)
    assert r.returncode == 0, r.stderr.decode()
    want = source or (EXACT if "--exact" in extra else ROLLUPS)
    assert want in r.stderr.decode(), r.stderr.decode()
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


@pytest.mark.parametrize("path", [[], ["--exact"]], ids=["rollups", "exact"])
def test_steady_baseline_flags_nothing(archives: Any, path: list[str]) -> None:
    env, start = archives(False)
    assert _run(env, start, *path) == []


@pytest.mark.parametrize("path", [[], ["--exact"]], ids=["rollups", "exact"])
def test_injected_anomalies_are_found_with_evidence(archives: Any, path: list[str]) -> None:
    """The same four findings from the hourly roll-ups and from the raw rows (--exact)."""
    env, start = archives(True)
    found = _run(env, start, *path)
    got = {(f["rule"], f["subject"]): f for f in found}
    assert set(got) == {
        ("new-peer", "shop/web -> shop/ledger:9000"),
        ("error-rate", "shop/payments POST /refund"),
        ("latency", "shop/cart GET /cart/{id}"),
        ("volume-drop", "infra/redis"),
    }, sorted(got)
    hour = lambda i: format_ns(start + i * HOUR_NS)[:19] + "Z"  # noqa: E731
    peer = got[("new-peer", "shop/web -> shop/ledger:9000")]
    assert peer["evidence"]["records"] == 60  # 30 calls + 30 flows
    assert "shop/payments" in peer["evidence"]["baseline_peers"]
    err = got[("error-rate", "shop/payments POST /refund")]
    assert err["evidence"]["hours"] == 1 and err["evidence"]["worst_hour"] == hour(ERROR_SPIKE)
    assert err["evidence"]["value"] >= 0.5 and err["evidence"]["baseline_median"] < 0.05
    assert err["evidence"]["z"] >= 4
    slow = got[("latency", "shop/cart GET /cart/{id}")]
    assert slow["evidence"]["hours"] == 3 and slow["from"] == hour(SLOW) and slow["to"] == hour(SLOW + 3)
    assert slow["evidence"]["p99_ms"] > 100 and slow["evidence"]["baseline_median_ms"] < 31
    drop = got[("volume-drop", "infra/redis")]
    assert drop["evidence"]["hours"] == 4 and drop["from"] == hour(DROP)
    assert drop["evidence"]["calls"] == 3 and drop["evidence"]["baseline_median_calls"] >= 60
    # the export command is one rawcap accepts, for that window and address
    argv = shlex.split(peer["export"])[1:]
    args = build_parser(argv).parse_args(_fix_time_args(argv))
    assert (args.source, args.host, args.port) == ("archive", ["10.9.9.9"], ["9000"])
    assert "--host 10.1.0.12 --port 6379" in drop["export"]


def test_text_output_and_filters(archives: Any) -> None:
    env, start = archives(True)
    end = start + DAYS * 24 * HOUR_NS
    r = rawcap("anomalies", "--from", format_ns(end - 24 * HOUR_NS), "--to", format_ns(end),
               "--baseline", format_ns(start), "--namespace", "infra", env=env, timeout=180)
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode()
    assert "[1] volume-drop" in text and "shop/payments" not in text
    assert "packets:  rawcap pcap export --source archive --from " in text
    assert "1 finding(s); source: archive (" in r.stderr.decode()


def test_rollup_backfill_then_rollups(archives: Any) -> None:
    """Objects written before roll-ups existed: anomalies read raw rows and say how to get
    roll-ups; --rollup-backfill writes them (once: a second run finds nothing to do); then
    the roll-ups answer, with the same findings."""
    env, start = archives(True, rolled=False)
    before = _run(env, start, source="from raw rows (calls objects without calls_1h roll-ups")
    end = start + DAYS * 24 * HOUR_NS
    n = DAYS * 24 * 2  # one calls and one flows object per hour
    for done, built in ((0, n), (n, 0)):
        r = rawcap("archive", "tables", "--rollup-backfill", "--from", format_ns(start),
                   "--to", format_ns(end), env=env, timeout=300)
        assert r.returncode == 0, r.stderr.decode()
        assert (f"backfill: {n} objects in range, {done} had their roll-ups, {built} rolled up"
                in r.stderr.decode()), r.stderr.decode()
    after = _run(env, start)
    key = lambda f: (f["rule"], f["subject"], f["from"], f["to"])  # noqa: E731
    assert sorted(map(key, after)) == sorted(map(key, before)) and len(after) == 4, (before, after)


def test_robust_z_rule() -> None:
    z, med, mad = robust_z(10.0, [1.0, 2.0, 3.0, 2.0, 2.0], 0.5)
    assert (med, mad) == (2.0, 0.0) and z == pytest.approx(16.0)  # the floor stands in for MAD 0
    z, _m, mad = robust_z(4.0, [1.0, 2.0, 3.0, 4.0, 5.0], 0.1)
    assert mad == 1.0 and z == pytest.approx(1 / 1.4826)


@pytest.mark.parametrize("args, needle", [
    (["--baseline", "-1h", "--from", "-2h"], "--baseline must be before --from"),
    (["--baseline", "last week"], "--baseline"),
    (["--source", "s3"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    r = rawcap("anomalies", "--url", "file:///nonexistent-rawcap-test", *args, env={}, timeout=60)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and needle in err[-1], (r.returncode, err)
    assert len(err) == 1 or err[0].startswith("usage:"), err
