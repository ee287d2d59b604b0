"""The local Kafka: Apache's own broker jars as a single-node KRaft broker+controller."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.errors import RawcapError

from . import _proc
from ._paths import find_kafka_jars

if TYPE_CHECKING:
    from ._security import Security

__all__ = ("KafkaServer", "kafka_answers", "new_cluster_id")

_LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {root}/server.log
appender.file.filePattern = {root}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def kafka_answers(port: int, host: str = "127.0.0.1", timeout: float = 1.0,
                  ssl_context: ssl.SSLContext | None = None) -> bool:
    """True when a Kafka broker on host:port answers an ApiVersions request (v0) with no error
    (over TLS with ``ssl_context``: a SASL_SSL listener answers ApiVersions before SASL)."""
    client = b"rawcap-stack"
    header = struct.pack(">hhih", 18, 0, 0x5EED, len(client)) + client
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                (raw if ssl_context is None else ssl_context.wrap_socket(raw, server_hostname=host)) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(header)) + header)
            buf = b""
            while len(buf) < 10:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
    except OSError:
        return False
    _size, correlation, error = struct.unpack(">iih", buf[:10])
    return correlation == 0x5EED and error == 0


@dataclass
class KafkaServer:
    """One broker process whose whole state lives under ``root`` (``<dataDir>/kafka``, or
    ``<dataDir>/kafka-N`` for node N of a cluster).

    A combined KRaft controller+broker. Alone (``voters`` empty) it is its own quorum; in a
    cluster every node gets the same static ``voters`` (``1@127.0.0.1:PORT,2@...``) and
    the internal topics ``replication`` copies. With ``security`` its one client listener is
    SASL_SSL and its controller listener mutual TLS (rawcap/stack/_security.py).
    """

    root: Path
    port: int
    controller_port: int
    heap: str = "1g"
    node_id: int = 1
    voters: str = ""
    replication: int = 1
    security: Security | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """The broker's log; JVM start-up failures land in stdout.log, so name that if newer."""
        server, stdout = self.root / "server.log", self.root / "stdout.log"
        try:
            if stdout.stat().st_size and stdout.stat().st_mtime > server.stat().st_mtime:
                return stdout
        except OSError:
            return stdout if stdout.exists() else server
        return server

    @property
    def _pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def _marker(self) -> str:
        return str(self.root / "server.properties")

    def pid(self) -> int | None:
        return _proc.running_pid(self._pid_file, self._marker)

    def answers(self) -> bool:
        ctx = self.security.ssl_context() if self.security is not None else None
        return kafka_answers(self.port, ssl_context=ctx)

    def _write_config(self) -> Path:
        data = self.root / "data"
        rf, isr = str(self.replication), str(min(2, self.replication))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(8 * 1024 * 1024 + 1024),
            "log.retention.check.interval.ms": "60000",
        }
        if self.replication > 1:
            # A broker killed with -9 is seen gone after the session timeout: keep it short
            # (the default 9 s) so that a failover takes seconds, not tens of seconds.
            props["broker.session.timeout.ms"] = "6000"
            props["broker.heartbeat.interval.ms"] = "1000"
        if self.security is not None:
            props.update(self.security.broker_props(self.port, self.controller_port))
        path = self.root / "server.properties"
        # Secrets live in this file (the JAAS line, the key store password), never in argv.
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f"{k}={v}\n" for k, v in props.items()))
        path.with_suffix(".tmp").replace(path)
        (self.root / "log4j2.properties").write_text(_LOG4J2.format(root=self.root))
        return path

    def _java(self) -> list[str]:
        java = shutil.which("java", path=os.path.join(os.environ.get("JAVA_HOME", ""), "bin")) \
            or shutil.which("java")
        if not java:
            raise RawcapError("java not found: install a JDK 17+ (make setup does)")
        jars = find_kafka_jars()
        return [
            java, f"-Xmx{self.heap}", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.root}",
            "-cp", f"{jars}/*",
        ]

    def _format(self, config: Path, cluster_id: str = "") -> None:
        if (self.root / "data" / "meta.properties").exists():
            return
        cluster_id = cluster_id or new_cluster_id()
        argv = [*self._java(), "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
                "--config", str(config), "--ignore-formatted"]
        argfile = self.root / "format.args"
        if self.security is not None:
            # SCRAM passwords: through a Java argument file (0600, deleted after), so that
            # they never show in a process's command line.
            fd = os.open(argfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(_argfile_quote(a) for a in
                                   [*argv[1:], *self.security.format_args()]) + "\n")
            argv = [argv[0], f"@{argfile}"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        finally:
            argfile.unlink(missing_ok=True)
        with open(self.root / "format.log", "a") as fh:
            # Not the bootstrap records: they hold the SCRAM users' salted keys.
            fh.writelines(line for line in (proc.stdout + proc.stderr).splitlines(keepends=True)
                          if "UserScramCredentialRecord" not in line)
        if proc.returncode != 0:
            raise RawcapError(
                f"formatting Kafka storage failed (exit {proc.returncode}); see {self.root / 'format.log'}"
            )

    def start(self, cluster_id: str = "") -> None:
        """Start the broker if it is not running (formats storage on first start; the nodes
        of one cluster share ``cluster_id``)."""
        if self.pid() is not None:
            return
        if _proc.port_open(self.port):
            raise RawcapError(f"port {self.port} is already in use: pick another with --kafka-port")
        if _proc.port_open(self.controller_port):
            if self.voters:
                raise RawcapError(f"controller port {self.controller_port} of Kafka node "
                                  f"{self.node_id} is in use: stop what holds it")
            # The quorum is static and single-node: its port may move between runs.
            self.controller_port = _proc.free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format(config, cluster_id)
        _proc.spawn([*self._java(), "kafka.Kafka", str(config)],
                    log_file=self.root / "stdout.log", pid_file=self._pid_file)

    def stop(self, timeout: float = 60.0) -> bool:
        return _proc.stop(self._pid_file, self._marker, timeout)

    def kill(self) -> bool:
        """``kill -9`` (what a crash looks like to the others); True if it was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, 9)
        _proc.stop(self._pid_file, self._marker, 10)  # reaps it and forgets the pid file
        return True


def new_cluster_id() -> str:
    cluster_id = "-"
    while cluster_id.startswith("-"):  # kafka-storage would read "-..." as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def _argfile_quote(arg: str) -> str:
    """One argument of a Java @argfile (double-quoted, backslashes and quotes escaped)."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
