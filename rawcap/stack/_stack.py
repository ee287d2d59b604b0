"""The local stack as one object: Kafka + S3 under one data directory.

``<dataDir>/stack.json`` remembers what must not change between runs (credentials, bucket,
controller and console ports) and the ports of the last ``up``, so that ``status`` and
``down`` find a running stack even when called with other flags.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio

from schemas.errors import RawcapError, TransportError

from ..config import Config, load_config
from . import _proc
from ._cluster import apply_acls, broker_status, make_brokers, wait_registered, write_client_files
from ._k8s import KubeCluster
from ._kafka import KafkaServer, new_cluster_id
from ._paths import read_state
from ._s3 import REGION, S3Server, create_bucket
from ._security import ADMIN_USER, MECHANISM, Security

__all__ = ("Stack",)

DEFAULT_TIMEOUT = 180.0


def _pick(port: int | None, remembered: Any, default: int) -> int:
    if port is not None:
        return port or _proc.free_port()
    if isinstance(remembered, int) and remembered:
        return remembered
    return default or _proc.free_port()


def _gone(alive: Callable[[], bool]) -> bool:
    """True when the server is not running, seen twice half a second apart. "Alive" means
    "a live process with our marker in its command line", and a launcher that re-executes
    itself (the java one can) has no command line for an instant. That is the likely cause
    of one suite run where ``stack up`` reported a broker it had spawned a moment before as
    exited: the broker was still starting (the suite's teardown stopped it a second later,
    before it had logged a line)."""
    if alive():
        return False
    time.sleep(0.5)
    return not alive()


class Stack:
    """A local Kafka (one broker, or a cluster of three) and MinIO server whose state lives
    in ``data_dir``.

    Ports given as None fall back to the ones remembered in stack.json, then to 9092/9000
    (a cluster: 9092, 9093, 9094); a port of 0 means "any free port" (what the test fixtures
    use). ``brokers`` and ``secure`` (SASL_SSL + ACLs, rawcap/stack/_security.py) are fixed
    when the data directory is first used: asking for another shape later is an error.
    """

    def __init__(self, data_dir: Path | str, *, kafka_port: int | None = None,
                 s3_port: int | None = None, bucket: str | None = None,
                 kafka_heap: str | None = None, brokers: int | None = None,
                 secure: bool | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._state_file = self.data_dir / "stack.json"
        state = self._load_state()
        self.n_brokers, self.secure = self._shape(state, brokers, secure)
        self.security = Security(self.data_dir / "security") if self.secure else None
        self.cluster_id: str = state.get("cluster_id") or ""
        s3 = S3Server(self.data_dir / "s3", 0, 0, "", "")
        probe = make_brokers(self.data_dir, self.n_brokers, state, kafka_port=None, running=True,
                             heap=None, security=None)
        running_k, running_s = any(b.pid() is not None for b in probe), s3.pid() is not None
        # A running server keeps the ports it was started with, whatever was asked for now.
        self.brokers = make_brokers(self.data_dir, self.n_brokers, state, kafka_port=kafka_port,
                                    running=running_k, heap=kafka_heap, security=self.security)
        self.kafka: KafkaServer = self.brokers[0]
        self.s3 = S3Server(
            self.data_dir / "s3",
            port=_pick(None if running_s else s3_port, state.get("s3_port"), 9000),
            console_port=_pick(None, state.get("console_port"), 0),
            access_key=state.get("access_key") or "rawcap",
            secret_key=state.get("secret_key") or secrets.token_hex(16),
        )
        self.bucket: str = bucket or state.get("bucket") or "rawcap"
        self.k8s = KubeCluster(self.data_dir / "k8s")  # started by up(k8s=True) only

    def _shape(self, state: dict[str, Any], brokers: int | None,
               secure: bool | None) -> tuple[int, bool]:
        had_n, had_secure = state.get("brokers"), state.get("secure")
        if not isinstance(had_n, int):  # a stack made before clusters: one plaintext broker
            had_n = 1 if (self.data_dir / "kafka").exists() else None
            had_secure = False if had_n else None
        n = brokers if brokers is not None else (had_n or 1)
        sec = secure if secure is not None else bool(had_secure)
        if n not in (1, 3):
            raise RawcapError(f"--brokers {n} is invalid: expected 1 or 3")
        if had_n is not None and (n != had_n or sec != bool(had_secure)):
            def shape(k: int, s: bool) -> str:
                return f"{k}-broker{' secured' if s else ''}"

            raise RawcapError(f"{self.data_dir} holds a {shape(had_n, bool(had_secure))} stack, not "
                              f"a {shape(n, sec)} one: use another --data-dir (or delete it)")
        return n, sec

    @classmethod
    def from_config(cls, cfg: Config, *, data_dir: str | None = None,
                    kafka_port: int | None = None, s3_port: int | None = None,
                    brokers: int | None = None, secure: bool | None = None) -> Stack:
        from ._paths import default_data_dir

        def configured(key: str) -> int | None:
            return cfg.get(key) if cfg.source(key) != "default" else None

        return cls(
            default_data_dir(data_dir or cfg.get("stack.dataDir")),
            kafka_port=kafka_port if kafka_port is not None else configured("stack.kafkaPort"),
            s3_port=s3_port if s3_port is not None else configured("stack.s3Port"),
            bucket=cfg.get("stack.bucket") if cfg.source("stack.bucket") != "default" else None,
            brokers=brokers, secure=secure,
        )

    # --- what clients need -------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def client_config(self) -> Path:
        """``<dataDir>/client.yaml``: the operator's values file of a secured stack."""
        return self.data_dir / "client.yaml"

    def service_config(self, service: str) -> Path:
        """``<dataDir>/clients/<service>.yaml``: that service's own user (secured stack)."""
        return self.data_dir / "clients" / f"{service}.yaml"

    @property
    def s3_endpoint(self) -> str:
        return self.s3.endpoint

    @property
    def access_key(self) -> str:
        return self.s3.access_key

    @property
    def secret_key(self) -> str:
        return self.s3.secret_key

    def s3_store_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``obstore.store.S3Store(bucket, **kwargs)``."""
        return {"endpoint": self.s3_endpoint, "access_key_id": self.access_key,
                "secret_access_key": self.secret_key, "region": REGION,
                "client_options": {"allow_http": True}}

    def s3_env(self) -> dict[str, str]:
        """The AWS_* variables with which ``s3://<bucket>`` URLs reach this store (obstore reads them)."""
        return {"AWS_ENDPOINT_URL": self.s3_endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_ALLOW_HTTP": "true"}

    def status(self) -> dict[str, Any]:
        brokers = broker_status(self.brokers)
        kafka: dict[str, Any] = {"bootstrap": self.bootstrap, "up": all(b["up"] for b in brokers),
                                 "brokers": brokers}
        if self.security is not None:
            kafka["security"] = {
                "protocol": "SASL_SSL", "mechanism": MECHANISM, "username": ADMIN_USER,
                "password": self.security.password(ADMIN_USER) if self.security.exists() else "",
                "ca_file": str(self.security.ca_file), "client_config": str(self.client_config)}
        return {
            "kafka": kafka,
            "s3": {"endpoint": self.s3_endpoint, "bucket": self.bucket,
                   "access_key": self.access_key, "secret_key": self.secret_key,
                   "up": self.s3.pid() is not None and self.s3.answers()},
            **({"k8s": self.k8s.status()} if self.k8s.configured else {}),
        }

    # --- lifecycle ---------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        return read_state(self._state_file)

    def _save_state(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "brokers": self.n_brokers, "secure": self.secure, "cluster_id": self.cluster_id,
            "kafka_port": self.kafka.port, "controller_port": self.kafka.controller_port,
            "kafka_ports": [b.port for b in self.brokers],
            "controller_ports": [b.controller_port for b in self.brokers],
            "s3_port": self.s3.port, "console_port": self.s3.console_port,
            "access_key": self.access_key, "secret_key": self.secret_key, "bucket": self.bucket,
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self._state_file)

    @staticmethod
    def _wait(what: str, answers: Callable[[], bool], alive: Callable[[], bool], log: Callable[[], Path],
              timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not answers():
            if _gone(alive):
                raise TransportError(f"{what} exited while starting; see {log()}")
            if time.monotonic() >= deadline:
                raise TransportError(f"{what} did not answer within {timeout:.0f} s; see {log()}")
            time.sleep(0.25)

    def start_kafka(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Start every broker that is not running and wait until each answers."""
        if self.security is not None:
            self.security.ensure()
        if not self.cluster_id:
            self.cluster_id = new_cluster_id()
        with ThreadPoolExecutor(len(self.brokers), thread_name_prefix="rawcap-broker") as pool:
            for f in [pool.submit(b.start, self.cluster_id) for b in self.brokers]:
                f.result()  # formats (a JVM each) in parallel
        self._save_state()
        for b in self.brokers:
            self.wait_broker(b, timeout)

    def wait_broker(self, b: KafkaServer, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._wait(f"Kafka node {b.node_id} on {b.bootstrap}", b.answers,
                   lambda: b.pid() is not None, lambda: b.log_file, timeout)

    def broker(self, node_id: int) -> KafkaServer:
        return self.brokers[node_id - 1]

    def kill_broker(self, node_id: int) -> bool:
        """``kill -9`` one broker (failure tests); ``start_kafka()`` brings it back."""
        return self.broker(node_id).kill()

    def start_s3(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.s3.start()
        self._save_state()
        self._wait(f"MinIO on {self.s3_endpoint}", self.s3.answers,
                   lambda: self.s3.pid() is not None, lambda: self.s3.log_file, timeout)
        deadline = time.monotonic() + timeout
        while True:  # MinIO answers "live" a moment before it serves requests (503)
            try:
                create_bucket(self.s3_endpoint, self.bucket, self.access_key, self.secret_key)
                return
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)

    def stop_kafka(self) -> bool:
        stopped = [b.stop() for b in reversed(self.brokers)]
        return any(stopped)

    def stop_s3(self) -> bool:
        return self.s3.stop()

    def config(self, cfg: Config | None = None, user: str = ADMIN_USER) -> Config:
        """``cfg`` (or the defaults) pointed at this stack's brokers (a secured stack: as
        ``user``, the operator by default)."""
        base = cfg if cfg is not None else load_config(env={})
        if self.security is None:
            return base.with_overrides({"kafka.bootstrap": self.bootstrap,
                                        "kafka.securityProtocol": "PLAINTEXT"})
        return base.with_overrides({
            "kafka.bootstrap": self.bootstrap, "kafka.securityProtocol": "SASL_SSL",
            "kafka.sasl.mechanism": MECHANISM, "kafka.sasl.username": user,
            "kafka.sasl.password": self.security.password(user),
            "kafka.tls.caFile": str(self.security.ca_file)})

    async def _after_start(self, cfg: Config, wait_s: float, topics: bool) -> None:
        from ..kafka import ensure_topics

        admin = self.config(cfg)
        if self.n_brokers > 1:
            await wait_registered(admin, self.n_brokers, wait_s)
        if self.security is not None:
            await apply_acls(admin, self.security)
            write_client_files(self.data_dir, self.bootstrap, self.security)
        if topics:
            await ensure_topics(admin, wait_s)

    def up(self, cfg: Config | None = None, timeout: float = DEFAULT_TIMEOUT,
           topics: bool = True, k8s: bool = False) -> dict[str, Any]:
        """Start what is not running, wait until both answer, create bucket and topics;
        with ``k8s`` also etcd + kube-apiserver + kube-controller-manager (``self.k8s``)."""
        # Check both ports first so that a clash does not leave one server half started.
        servers: list[Any] = [*((b, "--kafka-port") for b in self.brokers), (self.s3, "--s3-port")]
        for server, flag in servers:
            if server.pid() is None and _proc.port_open(server.port):
                raise RawcapError(f"port {server.port} is already in use: pick another with {flag}")
        try:
            self.start_s3(timeout)
            self.start_kafka(timeout)
            # In a thread of its own: up() may be called where an event loop is already
            # set (pytest-asyncio's session loop, an async command).
            with ThreadPoolExecutor(1, thread_name_prefix="rawcap-topics") as pool:
                pool.submit(anyio.run, self._after_start, cfg or load_config(env={}), timeout,
                            topics).result()
            if k8s:
                self.k8s.start(timeout)
        except RawcapError:
            raise
        except OSError as exc:
            raise RawcapError(f"starting the local stack in {self.data_dir} failed: {exc}") from None
        return self.status()

    def down(self) -> dict[str, bool]:
        """Stop both (SIGTERM, wait, SIGKILL after a timeout), and the Kubernetes control
        plane if it was ever started; True for each that was running."""
        k8s = {"k8s": self.k8s.stop()} if self.k8s.configured else {}
        return {"kafka": self.stop_kafka(), "s3": self.stop_s3(), **k8s}
