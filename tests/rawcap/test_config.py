"""The values file contract: Kubeshark defaults, aliases, precedence, one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rawcap.config import env_name, load_config, parse_duration, parse_size
from schemas.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return path


def test_kubeshark_defaults() -> None:
    cfg = load_config(env={})
    assert cfg.get("tap.capture.raw.enabled") is True
    assert cfg.get("tap.capture.raw.storageSize") == 1024**3
    assert cfg.get("tap.capture.stopped") is False
    assert cfg.get("tap.capture.stopAfter") == 300.0
    assert cfg.get("tap.capture.dbMaxSize") == 500 * 1024**2
    assert cfg.get("tap.regex") == ".*"
    assert cfg.get("tap.namespaces") == [] and cfg.get("tap.excludedNamespaces") == []


def test_nested_yaml_and_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, """
tap:
  capture:
    raw: {storageSize: 2Gi}
  namespaces: [shop, pay]
kafka:
  bootstrap: file:9092
""")
    cfg = load_config(path, env={"RAWCAP_KAFKA_BOOTSTRAP": "env:9092"})
    assert cfg.get("tap.capture.raw.storageSize") == 2 * 1024**3
    assert cfg.get("tap.namespaces") == ["shop", "pay"]
    assert cfg.get("kafka.bootstrap") == "env:9092"
    assert cfg.source("kafka.bootstrap") == "env RAWCAP_KAFKA_BOOTSTRAP"
    cfg = load_config(path, {"kafka.bootstrap": "flag:9092"}, env={"RAWCAP_BOOTSTRAP": "e:1"})
    assert cfg.get("kafka.bootstrap") == "flag:9092"
    assert load_config(path, env={"RAWCAP_BOOTSTRAP": "e:1"}).get("kafka.bootstrap") == "e:1"


def test_newer_kubeshark_spelling_is_an_alias(tmp_path: Path) -> None:
    path = write(tmp_path, "tap:\n  capture:\n    dissection:\n      enabled: false\n      stopAfter: 90s\n")
    cfg = load_config(path, env={})
    assert cfg.get("tap.capture.stopped") is True
    assert cfg.get("tap.capture.stopAfter") == 90.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tap:\n  capture:\n    raw:\n      storageSize: 10Gx\n",
         r"tap\.capture\.raw\.storageSize = '10Gx' is invalid: expected a size"),
        ("tap:\n  capture:\n    stopAfter: soon\n",
         r"tap\.capture\.stopAfter = 'soon' is invalid: expected a duration"),
        ("tap:\n  capture:\n    stopped: maybe\n", r"tap\.capture\.stopped = 'maybe'.*true or false"),
        ("tap:\n  regex: '(['\n", r"tap\.regex .* regular expression"),
        ("kafka:\n  securityProtocol: TLS\n", r"kafka\.securityProtocol.*one of PLAINTEXT, SSL"),
        ("metrics:\n  port: 70000\n", r"metrics\.port.*TCP port"),
        ("a: [\n", r"not valid YAML at line 2"),
        ("- just\n- a list\n", r"must be a YAML mapping"),
    ],
)
def test_bad_values_get_one_line_errors_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text), env={})
    assert "\n" not in str(info.value)


def test_unknown_key_warns_with_a_suggestion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "tap:\n  capture:\n    raw:\n      storagesize: 1Gi\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(path, env={})
    assert cfg.get("tap.capture.raw.storageSize") == 1024**3
    assert "tap.capture.raw.storagesize" in caplog.text
    assert "did you mean 'tap.capture.raw.storageSize'" in caplog.text


def test_missing_file_and_bad_env() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/values.yaml", env={})
    with pytest.raises(ConfigError, match=r"env RAWCAP_TAP_CAPTURE_RAW_STORAGE_SIZE.*expected a size"):
        load_config(env={"RAWCAP_TAP_CAPTURE_RAW_STORAGE_SIZE": "lots"})


@pytest.mark.parametrize(("text", "expected"), [
    ("1Gi", 1024**3), ("500Mi", 500 * 1024**2), ("64Ki", 65536), ("1G", 10**9),
    ("1048576", 1048576), (4096, 4096), ("1.5Gi", int(1.5 * 1024**3)),
])
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("5m", 300.0), ("90s", 90.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0), (12, 12.0),
])
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["5 minutes", "m5", "-1s", "", "1y"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_env_names() -> None:
    assert env_name("tap.capture.raw.storageSize") == "RAWCAP_TAP_CAPTURE_RAW_STORAGE_SIZE"
    assert env_name("kafka.bootstrap") == "RAWCAP_KAFKA_BOOTSTRAP"
