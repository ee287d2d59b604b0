"""``stack up --brokers 3``: the brokers of the local Kafka, their ports, and what follows
start-up (every broker registered, ACLs, client values files).

One broker keeps its old layout (``<dataDir>/kafka``, node 1, its own quorum). A cluster has
``<dataDir>/kafka-N`` for node N = 1..3, each a combined controller+broker with its own
client and controller port; the static quorum names all three controller ports, so those are
remembered in stack.json and never move.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from schemas.errors import RawcapError, TransportError

from . import _proc
from ._kafka import KafkaServer
from ._security import ADMIN_USER, SERVICE_ACLS, Security

__all__ = ("apply_acls", "broker_status", "make_brokers", "wait_registered", "write_client_files")

#: Heap per broker: 1 GiB alone; 512 MiB each for three (they share 2 cores and 24 GiB with
#: MinIO, the services and the tests; a broker of the suite's size stays well below it).
HEAP_ONE, HEAP_CLUSTER = "1g", "512m"


def _ports(n: int, asked: int | None, remembered: Any, default: int) -> list[int]:
    if asked is not None:
        return [_proc.free_port() for _ in range(n)] if asked == 0 else [asked + i for i in range(n)]
    if isinstance(remembered, list) and len(remembered) == n and all(
            isinstance(p, int) and p for p in remembered):
        return list(remembered)
    return [default + i for i in range(n)] if default else [_proc.free_port() for _ in range(n)]


def make_brokers(data_dir: Path, n: int, state: dict[str, Any], *, kafka_port: int | None,
                 running: bool, heap: str | None, security: Security | None) -> list[KafkaServer]:
    """The ``n`` brokers of the stack in ``data_dir`` (ports: asked, else remembered, else
    9092.. / free; a running cluster keeps the ports it was started with)."""
    if n == 1:
        ports = _ports(1, None if running else kafka_port, [state.get("kafka_port")], 9092)
        ctrl = _ports(1, None, [state.get("controller_port")], 0)
        return [KafkaServer(data_dir / "kafka", ports[0], ctrl[0], heap=heap or HEAP_ONE,
                            security=security)]
    ports = _ports(n, None if running else kafka_port, state.get("kafka_ports"), 9092)
    ctrl = _ports(n, None, state.get("controller_ports"), 0)
    voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(ctrl))
    return [KafkaServer(data_dir / f"kafka-{i + 1}", ports[i], ctrl[i], heap=heap or HEAP_CLUSTER,
                        node_id=i + 1, voters=voters, replication=min(3, n), security=security)
            for i in range(n)]


def broker_status(brokers: Sequence[KafkaServer]) -> list[dict[str, Any]]:
    out = []
    for b in brokers:
        pid = b.pid()
        out.append({"id": b.node_id, "bootstrap": b.bootstrap, "pid": pid,
                    "up": pid is not None and b.answers()})
    return out


async def wait_registered(cfg: Any, n: int, wait_s: float) -> None:
    """Until the cluster's metadata lists ``n`` brokers (topics of replication 3 need all)."""
    import anyio
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from ..kafka import admin_kwargs

    seen = 0
    with anyio.move_on_after(wait_s):
        while True:
            admin = AIOKafkaAdminClient(**admin_kwargs(cfg, request_timeout_ms=10_000))
            try:
                await admin.start()
                seen = len((await admin.describe_cluster())["brokers"])
                if seen >= n:
                    return
            except (KafkaError, OSError):
                pass
            finally:
                await admin.close()
            await anyio.sleep(0.5)
    raise TransportError(f"only {seen} of {n} Kafka brokers registered within {wait_s:.0f} s")


async def apply_acls(cfg: Any, security: Security) -> None:
    """Create every service user's ACLs (as the operator; creating an existing ACL is a no-op)."""
    import anyio
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    from ..kafka import admin_kwargs, admin_send

    class _CreateAcls(CreateAclsRequest):
        def __init__(self, creations: list[Any]) -> None:
            self._creations = creations

        def build(self, request_struct_class: Any) -> Any:
            if request_struct_class.API_VERSION < 1:
                raise RawcapError("the broker does not take CreateAcls v1")
            return request_struct_class(self._creations)

    admin = AIOKafkaAdminClient(**admin_kwargs(cfg, request_timeout_ms=15_000))
    try:
        with anyio.fail_after(60):
            await admin.start()
            resp = await admin_send(admin, _CreateAcls(security.acl_creations()))
    finally:
        await admin.close()
    for result in resp.creation_responses:
        if result[0] != 0:
            raise TransportError(f"creating the stack's Kafka ACLs failed: error {result[0]} "
                                 f"({result[1]})")


def _write_yaml(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# written by `rawcap stack up --secure`: pass it with --config\n")
        yaml.safe_dump(doc, fh, sort_keys=False)
    tmp.replace(path)


def write_client_files(data_dir: Path, bootstrap: str, security: Security) -> dict[str, str]:
    """``<dataDir>/client.yaml`` (the operator) and ``<dataDir>/clients/<service>.yaml``
    (each service's own user); returns service -> path (``""`` for the operator's)."""
    out = {"": str(data_dir / "client.yaml")}
    _write_yaml(data_dir / "client.yaml", security.client_values(bootstrap, ADMIN_USER))
    for service in SERVICE_ACLS:
        path = data_dir / "clients" / f"{service}.yaml"
        _write_yaml(path, security.client_values(bootstrap, security.service_user(service)))
        out[service] = str(path)
    return out
