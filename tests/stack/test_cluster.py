"""``rawcap stack up --brokers 3 --secure`` against the session's private cluster: three real
KRaft brokers, SASL_SSL with SCRAM-SHA-512, ACLs per service user."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from rawcap.config import MASK
from rawcap.kafka import admin_kwargs
from rawcap.stack import Stack, kafka_answers
from schemas.topics import ALL_TOPICS, PACKETS

from .test_stack import rawcap

pytestmark = pytest.mark.integration


def status(stack: Stack) -> dict[str, Any]:
    out = rawcap("stack", "status", "--json", "--data-dir", str(stack.data_dir)).stdout
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def secrets_of(stack: Stack) -> list[str]:
    assert stack.security is not None
    doc = stack.security.secrets()
    return [*doc["users"].values(), doc["keystore"]]


def test_status_lists_every_broker_and_the_security(cluster: Stack) -> None:
    k = status(cluster)["kafka"]
    assert k["up"] is True
    assert k["brokers"] == [{"id": b.node_id, "bootstrap": b.bootstrap, "pid": b.pid(), "up": True}
                            for b in cluster.brokers]
    assert [b["id"] for b in k["brokers"]] == [1, 2, 3]
    assert len({b["bootstrap"] for b in k["brokers"]}) == 3
    assert k["bootstrap"] == ",".join(b["bootstrap"] for b in k["brokers"])
    assert cluster.security is not None
    assert k["security"] == {
        "protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512", "username": "rawcap",
        "password": cluster.security.password("rawcap"), "ca_file": str(cluster.security.ca_file),
        "client_config": str(cluster.client_config)}
    values = yaml.safe_load(cluster.client_config.read_text())
    assert values["kafka"] == {
        "bootstrap": k["bootstrap"], "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "username": "rawcap",
                 "password": k["security"]["password"]},
        "tls": {"caFile": k["security"]["ca_file"]}}
    for path in (cluster.client_config, cluster.service_config("capture")):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


def test_every_broker_speaks_tls_only(cluster: Stack) -> None:
    assert cluster.security is not None
    ctx = cluster.security.ssl_context()
    for b in cluster.brokers:
        assert kafka_answers(b.port, ssl_context=ctx)
        assert not kafka_answers(b.port), f"node {b.node_id} answered plaintext"
        assert not kafka_answers(b.controller_port, ssl_context=ctx), \
            f"node {b.node_id}'s controller listener took a client without a certificate"


async def test_topics_have_three_replicas_and_min_isr_two(cluster: Stack) -> None:
    admin = AIOKafkaAdminClient(**admin_kwargs(cluster.config()))
    await admin.start()
    try:
        described = await admin.describe_topics(list(ALL_TOPICS))
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)
                                                for t in ALL_TOPICS])
    finally:
        await admin.close()
    for topic in described:
        assert topic["error_code"] == 0, topic
        for part in topic["partitions"]:
            assert sorted(part["replicas"]) == [1, 2, 3], (topic["topic"], part)
    found = {}
    for r in configs:
        for _code, _msg, _type, name, entries in r.resources:
            found[name] = {e[0]: e[1] for e in entries}
    assert {found[t]["min.insync.replicas"] for t in ALL_TOPICS} == {"2"}
    assert found[PACKETS]["retention.ms"] == "-1"


def test_another_shape_in_the_same_data_dir_is_one_line(cluster: Stack) -> None:
    proc = rawcap("stack", "up", "--data-dir", str(cluster.data_dir), "--brokers", "1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rawcap: error: {cluster.data_dir} holds a 3-broker secured stack, not a 1-broker secured one: "
        "use another --data-dir (or delete it)"]


def test_no_secret_in_a_command_line_or_a_broker_log(cluster: Stack) -> None:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        found += [pid for s in secrets_of(cluster) if s in cmdline]
    assert found == [], f"a password is on the command line of pid(s) {found}"
    logs = [p for p in cluster.data_dir.rglob("*") if p.is_file() and (
        p.name.endswith(".log") or ".log." in p.name)]
    assert len(logs) >= 6  # server.log and stdout.log of each broker (and format.log)
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [s for s in secrets_of(cluster) if s in text], f"a password is in {log}"


def test_config_show_masks_the_password(cluster: Stack) -> None:
    for extra in ((), ("--json",), ("--sources",)):
        out = rawcap("--config", str(cluster.client_config), "config", "show", *extra).stdout
        assert MASK in out
        assert not [s for s in secrets_of(cluster) if s in out]


def _variant(cluster: Stack, tmp_path: Path, service: str, **changes: str) -> Path:
    values = yaml.safe_load(cluster.service_config(service).read_text())
    if "password" in changes:
        values["kafka"]["sasl"]["password"] = changes["password"]
    if "ca" in changes:
        values["kafka"]["tls"]["caFile"] = changes["ca"]
    path = tmp_path / f"{service}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("rawcap: error:")]
    assert len(ours) == 1, proc.stderr
    assert ours[0] == proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    return ours[0]


COMMANDS = {
    "consume": ("forensics", ["consume", "--from", "-1h"]),
    "pcap export": ("forensics", ["pcap", "export", "--from", "-1h", "-o", "{tmp}/x.pcapng"]),
    "flows": ("forensics", ["flows", "--from", "-1h"]),
    "dissect": ("dissect", ["dissect", "--from", "-1h", "--no-store", "--no-k8s"]),
    "archive": ("archive", ["archive", "--url", "file://{tmp}/archive"]),
    "dissection": ("dissect", ["dissection", "status"]),
    "capture": ("capture", ["capture", "--iface", "lo", "--duration", "5", "--buffer-dir",
                            "{tmp}/buf", "--no-procs"]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_wrong_password_is_one_line(cluster: Stack, tmp_path: Path, name: str) -> None:
    service, argv = COMMANDS[name]
    path = _variant(cluster, tmp_path, service, password="not-the-password")
    proc = rawcap("--config", str(path), *[a.format(tmp=tmp_path) for a in argv], check=False)
    line = _one_line(proc)
    user = cluster.security.service_user(service) if cluster.security else ""
    assert f"SASL authentication as {user!r} (SCRAM-SHA-512) failed" in line
    assert "wrong kafka.sasl.username or kafka.sasl.password" in line
    assert not [s for s in secrets_of(cluster) if s in proc.stderr + proc.stdout]


@pytest.mark.parametrize("name", ["consume", "pcap export", "archive", "capture"])
def test_an_unknown_ca_is_one_line(cluster: Stack, tmp_path: Path, name: str) -> None:
    service, argv = COMMANDS[name]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(tmp_path / "o.key"),
                    "-out", str(tmp_path / "other-ca.pem"), "-days", "1", "-subj", "/CN=other"],
                   check=True, capture_output=True, timeout=60)
    path = _variant(cluster, tmp_path, service, ca=str(tmp_path / "other-ca.pem"))
    line = _one_line(rawcap("--config", str(path), *[a.format(tmp=tmp_path) for a in argv],
                            check=False))
    assert "TLS: the certificate of the Kafka broker at 127.0.0.1:" in line
    assert f"is not trusted by kafka.tls.caFile ({tmp_path / 'other-ca.pem'})" in line


@pytest.mark.parametrize(("service", "argv", "what"), [
    ("capture", ["flows", "--from", "-1h"], "topic rawcap.flows"),
    ("forensics", ["dissection", "start"], "topic rawcap.control"),
    ("enrich", ["archive", "--url", "file://{tmp}/archive"], "consumer group rawcap-archiver"),
    ("capture", ["dissect", "--from", "-1h", "--no-store"], "topic rawcap.k8s"),
])
def test_a_denied_topic_or_group_is_one_line(cluster: Stack, tmp_path: Path, service: str,
                                            argv: list[str], what: str) -> None:
    proc = rawcap("--config", str(cluster.service_config(service)),
                  *[a.format(tmp=tmp_path) for a in argv], check=False)
    line = _one_line(proc)
    user = cluster.security.service_user(service) if cluster.security else ""
    assert f"Kafka denied user {user!r} access to {what} (no ACL allows it)" in line
