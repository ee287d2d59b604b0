"""``rawcap stack`` against the session's private stack (real Kafka broker, real MinIO)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import obstore
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from obstore.store import S3Store

from rawcap.kafka import admin_kwargs, ensure_topics
from rawcap.stack import Stack
from schemas.topics import ALL_TOPICS, CONTROL, PACKETS

pytestmark = pytest.mark.integration


def rawcap(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("rawcap")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                             "from rawcap.cli import main; raise SystemExit(main())"]
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"rawcap {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def status_json(stack: Stack) -> dict[str, Any]:
    out = rawcap("stack", "status", "--json", "--data-dir", str(stack.data_dir)).stdout
    assert out.count("\n") == 1, f"expected exactly one JSON line, got {out!r}"
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def test_status_json_has_exactly_the_documented_shape(stack: Stack) -> None:
    doc = status_json(stack)
    assert doc == {
        "kafka": {"bootstrap": stack.bootstrap, "up": True,
                  "brokers": [{"id": 1, "bootstrap": stack.bootstrap, "pid": stack.kafka.pid(),
                               "up": True}]},
        "s3": {"endpoint": stack.s3_endpoint, "bucket": stack.bucket,
               "access_key": stack.access_key, "secret_key": stack.secret_key, "up": True},
    }
    assert doc["kafka"]["bootstrap"].startswith("127.0.0.1:")
    assert doc["s3"]["endpoint"].startswith("http://127.0.0.1:")


def test_up_is_idempotent(stack: Stack) -> None:
    pids = (stack.kafka.pid(), stack.s3.pid())
    proc = rawcap("stack", "up", "--json", "--data-dir", str(stack.data_dir))
    assert json.loads(proc.stdout) == status_json(stack)
    assert (stack.kafka.pid(), stack.s3.pid()) == pids, "up restarted a running server"


def test_status_of_a_stack_that_is_not_running(tmp_path: Path) -> None:
    proc = rawcap("stack", "status", "--json", "--data-dir", str(tmp_path / "none"),
                  "--kafka-port", "1", "--s3-port", "2", check=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["kafka"] == {"bootstrap": "127.0.0.1:1", "up": False, "brokers": [
        {"id": 1, "bootstrap": "127.0.0.1:1", "pid": None, "up": False}]}
    assert doc["s3"]["up"] is False and doc["s3"]["endpoint"] == "http://127.0.0.1:2"


def test_kcat_lists_the_rawcap_topics(stack: Stack) -> None:
    proc = subprocess.run(["kcat", "-b", stack.bootstrap, "-L", "-J"], capture_output=True,
                          text=True, timeout=60, check=True)
    topics = {t["topic"]: t for t in json.loads(proc.stdout)["topics"]}
    assert set(ALL_TOPICS) <= set(topics)
    assert len(topics[PACKETS]["partitions"]) == 6


async def test_topics_have_explicit_configs_and_ensure_is_idempotent(stack: Stack, make_config) -> None:
    cfg = make_config()
    assert await ensure_topics(cfg) == []
    admin = AIOKafkaAdminClient(**admin_kwargs(cfg))
    await admin.start()
    try:
        resp = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, PACKETS),
             ConfigResource(ConfigResourceType.TOPIC, CONTROL)])
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for r in resp:
        for _code, _msg, _type, name, entries in r.resources:
            configs[name] = {e[0]: e[1] for e in entries}
    assert configs[PACKETS]["retention.bytes"] == str(1024**3)  # tap.capture.raw.storageSize 1Gi
    assert configs[PACKETS]["max.message.bytes"] == str(8 * 1024 * 1024)
    assert configs[PACKETS]["retention.ms"] == "-1"  # the FIFO is retention.bytes alone
    assert configs[CONTROL]["cleanup.policy"] == "compact"


async def test_s3_put_and_get_with_the_printed_credentials(stack: Stack) -> None:
    s3 = status_json(stack)["s3"]
    store = S3Store(s3["bucket"], endpoint=s3["endpoint"], access_key_id=s3["access_key"],
                    secret_access_key=s3["secret_key"], region="us-east-1",
                    client_options={"allow_http": True})
    key = f"test/{uuid.uuid4().hex}.bin"
    await obstore.put_async(store, key, b"rawcap" * 1000)
    got = await obstore.get_async(store, key)
    assert bytes(await got.bytes_async()) == b"rawcap" * 1000


async def _produce(bootstrap: str, topic: str, value: bytes) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=b"node-a", partition=0)
    finally:
        await producer.stop()
    return int(meta.offset)


async def _fetch(bootstrap: str, topic: str, offset: int) -> bytes:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=20_000, max_records=1)
        return bytes(batch[tp][0].value or b"")
    finally:
        await consumer.stop()


async def test_data_survives_down_and_up(stack: Stack) -> None:
    value = uuid.uuid4().bytes
    offset = await _produce(stack.bootstrap, CONTROL, value)
    store = S3Store(stack.bucket, **stack.s3_store_kwargs())
    await obstore.put_async(store, "survives.txt", value)

    down = rawcap("stack", "down", "--json", "--data-dir", str(stack.data_dir))
    assert json.loads(down.stdout) == {"stopped": {"kafka": True, "s3": True}}
    assert stack.kafka.pid() is None and stack.s3.pid() is None
    gone = rawcap("stack", "status", "--json", "--data-dir", str(stack.data_dir), check=False)
    assert gone.returncode == 1
    assert json.loads(gone.stdout)["kafka"]["up"] is False

    up = json.loads(rawcap("stack", "up", "--json", "--data-dir", str(stack.data_dir)).stdout)
    assert (up["kafka"]["bootstrap"], up["kafka"]["up"]) == (stack.bootstrap, True)
    assert up["s3"]["secret_key"] == stack.secret_key

    assert await _fetch(stack.bootstrap, CONTROL, offset) == value
    got = await obstore.get_async(store, "survives.txt")
    assert bytes(await got.bytes_async()) == value


async def test_fixture_stop_start_keeps_data(stack: Stack) -> None:
    value = uuid.uuid4().bytes
    offset = await _produce(stack.bootstrap, CONTROL, value)
    stack.stop_kafka()
    stack.stop_s3()
    assert not stack.kafka.answers() and not stack.s3.answers()
    stack.start_s3()
    stack.start_kafka()
    assert await _fetch(stack.bootstrap, CONTROL, offset) == value


def test_up_on_a_busy_port_is_a_one_line_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = rawcap("stack", "up", "--data-dir", str(tmp_path), "--kafka-port", str(port),
                      "--s3-port", "0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"rawcap: error: port {port} is already in use: pick another with --kafka-port")
    assert not (tmp_path / "s3" / "minio.pid").exists()
