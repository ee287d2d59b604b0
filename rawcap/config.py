"""The values file: Helm-chart keys users already know, plus rawcap's own.

Precedence, lowest first: built-in defaults < values YAML (``--config``) < environment
(``RAWCAP_<KEY>``, dots and camelCase become ``_``-separated upper case, e.g.
``RAWCAP_KAFKA_BOOTSTRAP``) < CLI flags. Every key is declared once in ``KEYS`` with its
default and parser; a bad value raises :class:`ConfigError` naming the key and what is
allowed, an unknown key warns with the closest known spelling.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.errors import ConfigError

__all__ = (
    "ALIASES",
    "KEYS",
    "MASK",
    "Config",
    "Key",
    "env_name",
    "load_config",
    "parse_bool",
    "parse_duration",
    "parse_size",
)

log = logging.getLogger("rawcap.config")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
    "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    """``1Gi``, ``500Mi``, ``64k``, ``1048576`` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a size, like 1Gi, 500Mi or 1048576")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a non-negative size")
        return value
    m = _SIZE_RE.match(str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("a size, like 1Gi, 500Mi, 64Ki or 1048576 (units Ki Mi Gi Ti, k M G T)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``5m``, ``1h30m``, ``90s``, ``250ms``, ``0`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration, like 5m, 90s or 1h30m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a non-negative duration")
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if not text or _DURATION_RE.sub("", text) != "":
        raise ValueError("a duration, like 5m, 90s, 250ms or 1h30m (units ms s m h d)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(text))


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError("true or false")


def _str(value: Any) -> str:
    if isinstance(value, dict | list):
        raise ValueError("a string")
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("an integer") from None


def _positive_int(value: Any) -> int:
    n = _int(value)
    if n <= 0:
        raise ValueError("a positive integer")
    return n


def _non_negative_int(value: Any) -> int:
    n = _int(value)
    if n < 0:
        raise ValueError("a non-negative integer")
    return n


def _port(value: Any) -> int:
    n = _int(value)
    if not 0 <= n <= 65535:
        raise ValueError("a TCP port from 0 to 65535")
    return n


def _str_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return [str(v) for v in value]
    raise ValueError("a list of strings (YAML list, or comma-separated in env/flags)")


def _regex(value: Any) -> str:
    text = _str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"a valid regular expression ({exc})") from None
    return text


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value)
        if text not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return text

    return parse


def _zstd_level(value: Any) -> int:
    n = _int(value)
    if not -7 <= n <= 22:
        raise ValueError("a zstd level from -7 to 22")
    return n


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str = ""
    #: never shown: ``config show`` prints it as ``MASK``
    secret: bool = False


def _default_node() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


KEYS: tuple[Key, ...] = (
    # --- tap (Kubeshark-compatible values) ---
    Key("tap.capture.raw.enabled", True, parse_bool, "raw capture on/off"),
    Key("tap.capture.raw.storageSize", "1Gi", parse_size, "node FIFO buffer budget"),
    Key("tap.capture.stopped", False, parse_bool, "real-time dissection stopped"),
    Key("tap.capture.stopAfter", "5m", parse_duration, "stop dissection after idle"),
    Key("tap.capture.dbMaxSize", "500Mi", parse_size, "local calls store budget"),
    Key("tap.regex", ".*", _regex, "pod name regex to capture"),
    Key("tap.namespaces", [], _str_list, "namespaces to capture (empty: all)"),
    Key("tap.excludedNamespaces", [], _str_list, "namespaces never captured"),
    Key("tap.snapshots.cloud.provider", "", _str, "snapshot storage: '', s3, gcs, azblob"),
    Key("tap.snapshots.cloud.s3.bucket", "", _str, "snapshot bucket (provider s3)"),
    Key("tap.snapshots.cloud.prefix", "", _str, "snapshot object prefix"),
    # --- node / logging / metrics ---
    Key("node.name", None, _str, "node name (default: $NODE_NAME or hostname)"),
    Key("log.level", "info", _choice("debug", "info", "warning", "error"), "log level"),
    Key("log.format", "text", _choice("text", "json"), "log format"),
    Key("metrics.port", 0, _port, "Prometheus /metrics port (0: off)"),
    # --- kafka ---
    Key("kafka.bootstrap", "", _str, "HOST:PORT[,HOST:PORT] ($RAWCAP_BOOTSTRAP)"),
    Key("kafka.clientId", "rawcap", _str, "Kafka client id"),
    Key(
        "kafka.securityProtocol",
        "PLAINTEXT",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "Kafka security protocol",
    ),
    Key("kafka.sasl.mechanism", "PLAIN", _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), ""),
    Key("kafka.sasl.username", "", _str, "SASL user"),
    Key("kafka.sasl.password", "", _str, "SASL password", secret=True),
    Key("kafka.tls.caFile", "", _str, "CA bundle for TLS"),
    Key("kafka.tls.certFile", "", _str, "client certificate (mTLS)"),
    Key("kafka.tls.keyFile", "", _str, "client key (mTLS)"),
    Key("kafka.readClient", "auto", _choice("auto", "aiokafka"),
        "bounded reads: rawcap's plaintext client where it can (auto), or aiokafka always"),
    Key("kafka.topics.packets.partitions", 6, _positive_int, "partitions of rawcap.packets"),
    Key("kafka.topics.replicationFactor", 0, _non_negative_int,
        "replication of created topics (0: 3 when the cluster has 3+ brokers, else 1)"),
    Key("kafka.topics.minInsyncReplicas", 0, _non_negative_int,
        "min.insync.replicas of created topics (0: 2 with replication 3+, else 1)"),
    # --- stack ---
    Key("stack.dataDir", "", _str, "local stack data dir (default ./.rawcap/stack)"),
    Key("stack.kafkaPort", 9092, _port, "local Kafka port"),
    Key("stack.s3Port", 9000, _port, "local S3 port"),
    Key("stack.bucket", "rawcap", _str, "local S3 bucket"),
    # --- capture ---
    Key("capture.iface", "any", _str, "interface(s) to capture, comma-separated, or any"),
    Key("capture.bufferDir", "/var/lib/rawcap/buffer", _str, "node FIFO buffer directory"),
    Key("capture.snaplen", 0, _int, "bytes kept per packet (0: whole packet)"),
    Key("capture.ring.blockSize", "4Mi", parse_size, "TPACKET_V3 block size"),
    Key("capture.ring.blockCount", 8, _positive_int, "TPACKET_V3 block count"),
    Key("capture.ring.blockTimeout", "250ms", parse_duration, "retire a partial block after"),
    Key("capture.batch.maxBytes", "4Mi", parse_size, "close a batch at this body size"),
    Key("capture.batch.maxDelay", "1s", parse_duration, "close a batch after this long"),
    Key("capture.codec", "zstd", _choice("zstd", "none"),
        "batch body codec: zstd (adaptive: plain when it does not pay) or none (never compress)"),
    Key("capture.zstdLevel", -3, _zstd_level, "zstd level of batch bodies"),
    Key("capture.segmentSize", "16Mi", parse_size, "FIFO segment file size"),
    Key("capture.memoryBuffer", "64Mi", parse_size,
        "unacknowledged batches kept in memory before they go to disk (0: disk first)"),
    Key("capture.spillAfter", "2s", parse_duration,
        "write a batch to disk when Kafka has not acknowledged it within this"),
    Key("capture.kafka", True, parse_bool, "ship to Kafka (false: only fill the buffer)"),
    # --- archive ---
    Key("archive.url", "", _str, "archive bucket URL: s3://, gs://, az://, file://"),
    Key("archive.objectSize", "32Mi", parse_size, "target archive object size"),
    Key("archive.flushInterval", "2m", parse_duration, "flush an archive object after"),
    Key("archive.retention", "0", parse_duration, "delete archive hours older than (0: keep)"),
    Key("archive.tables.objectSize", "64Mi", parse_size,
        "calls/flows Parquet objects: cut after this much record data (msgpack bytes)"),
    Key("archive.tables.flushInterval", "1h", parse_duration,
        "calls/flows Parquet objects: write one at the latest after this long"),
    Key("archive.tables.rowGroupRows", 131072, _positive_int, "rows per Parquet row group"),
    # --- history (rawcap trends / anomalies) ---
    Key("history.kafkaRecent", "2h", parse_duration,
        "--source auto: the last this-much of a range from Kafka, the rest from the archive"),
    # --- snapshots / forensics ---
    Key("snapshots.url", "", _str, "snapshot store URL (default ./.rawcap/snapshots)"),
    # --- dissector ---
    Key("dissector.redactHeaders", [], _str_list, "extra headers to redact"),
    Key("dissector.maxFlows", 100_000, _positive_int, "TCP flows tracked at once"),
    Key("dissector.maxFlowBytes", "4Mi", parse_size, "buffered bytes per flow direction"),
    Key("dissector.maxBodyBytes", "64Ki", parse_size, "HTTP body bytes kept per message"),
    Key("dissector.dbPath", "", _str, "local calls store (default ./.rawcap/calls.db)"),
    # --- enrich ---
    Key("k8s.kubeconfig", "", _str, "kubeconfig path (default: in-cluster, then ~/.kube)"),
    Key("enrich.flowInterval", "10s", parse_duration, "flow record interval"),
    Key("enrich.grace", "2s", parse_duration, "wait this long past an interval before publishing it"),
    Key("enrich.maxFlows", 200_000, _positive_int, "flows held in memory per node"),
)

#: Newer Kubeshark spellings -> (rawcap key, value transform).
ALIASES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "tap.capture.dissection.enabled": ("tap.capture.stopped", lambda v: not parse_bool(v)),
    "tap.capture.dissection.stopAfter": ("tap.capture.stopAfter", lambda v: v),
}

_BY_NAME = {k.name: k for k in KEYS}

#: What ``Config.masked()`` shows instead of a secret that is set.
MASK = "********"


def env_name(key: str) -> str:
    """``kafka.bootstrap`` -> ``RAWCAP_KAFKA_BOOTSTRAP``; ``tap.capture.raw.storageSize`` ->
    ``RAWCAP_TAP_CAPTURE_RAW_STORAGE_SIZE``."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).replace(".", "_")
    return "RAWCAP_" + snake.upper()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and name not in _BY_NAME:
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


class Config:
    """Effective configuration: typed values by dotted key, plus where each came from."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]) -> None:
        self._values = values
        self._sources = sources

    def get(self, key: str) -> Any:
        if key not in self._values:
            raise KeyError(f"no configuration key {key!r}")
        return self._values[key]

    __getitem__ = get

    def source(self, key: str) -> str:
        return self._sources.get(key, "default")

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with some keys replaced (parsed and validated like any other source)."""
        values, sources = dict(self._values), dict(self._sources)
        for key, raw in overrides.items():
            values[key] = _parse(key, raw, "override")
            sources[key] = "override"
        return Config(values, sources)

    @property
    def node(self) -> str:
        return self._values["node.name"] or _default_node()

    def masked(self) -> Config:
        """A copy in which every secret key that is set reads ``MASK`` (for showing)."""
        values = dict(self._values)
        for key in KEYS:
            if key.secret and values.get(key.name):
                values[key.name] = MASK
        return Config(values, dict(self._sources))

    def as_dict(self) -> dict[str, Any]:
        return dict(sorted(self._values.items()))

    def as_tree(self) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for key, value in sorted(self._values.items()):
            node = tree
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return tree


def _parse(key: str, raw: Any, origin: str) -> Any:
    spec = _BY_NAME.get(key)
    if spec is None:
        raise ConfigError(f"{origin}: unknown configuration key {key!r}")
    if raw is None and spec.default is None:
        return None
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {key} = {raw!r} is invalid: expected {exc}") from None


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, [*_BY_NAME, *ALIASES], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration; raises ConfigError with a one-line message."""
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {k.name: (k.default, "default") for k in KEYS}

    if path:
        import yaml  # only with a values file: PyYAML is ~25 ms of every command's start-up

        origin = str(path)
        try:
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {origin} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {origin} cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"config file {origin} is not valid YAML{where}: {problem}") from None
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {origin} must be a YAML mapping of keys")
        for key, value in _flatten(doc).items():
            if key in ALIASES:
                target, transform = ALIASES[key]
                try:
                    raw[target] = (transform(value), origin)
                except ValueError as exc:
                    raise ConfigError(
                        f"{origin}: {key} = {value!r} is invalid: expected {exc}"
                    ) from None
            elif key in _BY_NAME:
                raw[key] = (value, origin)
            else:
                log.warning("%s: unknown configuration key %r ignored%s", origin, key, _suggest(key))

    for key in _BY_NAME:
        name = env_name(key)
        if name in env:
            raw[key] = (env[name], f"env {name}")
    if "RAWCAP_BOOTSTRAP" in env:
        raw["kafka.bootstrap"] = (env["RAWCAP_BOOTSTRAP"], "env RAWCAP_BOOTSTRAP")

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _BY_NAME:
            raise ConfigError(f"unknown configuration key {key!r}{_suggest(key)}")
        raw[key] = (value, "flag")

    values = {key: _parse(key, value, origin) for key, (value, origin) in raw.items()}
    sources = {key: origin for key, (_v, origin) in raw.items()}
    return Config(values, sources)
