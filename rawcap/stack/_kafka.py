"""The local Kafka: Apache's own broker jars as a single-node KRaft broker+controller."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import RawcapError

from . import _proc
from ._paths import find_kafka_jars

__all__ = ("KafkaServer", "kafka_answers")

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


def kafka_answers(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when a Kafka broker on host:port answers an ApiVersions request (v0) with no error."""
    client = b"rawcap-stack"
    header = struct.pack(">hhih", 18, 0, 0x5EED, len(client)) + client
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
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
    """One broker process whose whole state lives under ``root`` (``<dataDir>/kafka``)."""

    root: Path
    port: int
    controller_port: int
    heap: str = "1g"

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
        return kafka_answers(self.port)

    def _write_config(self) -> Path:
        data = self.root / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(8 * 1024 * 1024 + 1024),
            "log.retention.check.interval.ms": "60000",
        }
        path = self.root / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
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

    def _format(self, config: Path) -> None:
        if (self.root / "data" / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # kafka-storage would read "-..." as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            [*self._java(), "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
             "--config", str(config), "--ignore-formatted"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        with open(self.root / "format.log", "a") as fh:
            fh.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RawcapError(
                f"formatting Kafka storage failed (exit {proc.returncode}); see {self.root / 'format.log'}"
            )

    def start(self) -> None:
        """Start the broker if it is not running (formats storage on first start)."""
        if self.pid() is not None:
            return
        if _proc.port_open(self.port):
            raise RawcapError(f"port {self.port} is already in use: pick another with --kafka-port")
        if _proc.port_open(self.controller_port):
            # The quorum is static and single-node: its port may move between runs.
            self.controller_port = _proc.free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format(config)
        _proc.spawn([*self._java(), "kafka.Kafka", str(config)],
                    log_file=self.root / "stdout.log", pid_file=self._pid_file)

    def stop(self, timeout: float = 60.0) -> bool:
        return _proc.stop(self._pid_file, self._marker, timeout)
