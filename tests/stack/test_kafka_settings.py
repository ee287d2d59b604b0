"""``rawcap.kafka`` settings from the values file (no broker needed)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from rawcap.config import load_config
from rawcap.kafka import client_kwargs, consumer_kwargs, producer_kwargs, topic_specs
from schemas.errors import ConfigError
from schemas.topics import ALL_TOPICS, K8S, PACKETS


def cfg(**kw: object):
    return load_config(overrides={k.replace("__", "."): v for k, v in kw.items()}, env={})


def test_plaintext_defaults() -> None:
    kw = client_kwargs(cfg(kafka__bootstrap="a:9092, b:9093"))
    assert kw == {"bootstrap_servers": ["a:9092", "b:9093"], "client_id": "rawcap",
                  "security_protocol": "PLAINTEXT"}


def test_missing_bootstrap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap"):
        client_kwargs(cfg())


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl(mechanism: str) -> None:
    kw = producer_kwargs(cfg(kafka__bootstrap="k:9094", kafka__securityProtocol="SASL_SSL",
                             kafka__sasl__mechanism=mechanism, kafka__sasl__username="u",
                             kafka__sasl__password="p"))
    assert kw["sasl_mechanism"] == mechanism
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("u", "p")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["acks"] == "all"


def test_sasl_without_user_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.sasl\.username"):
        client_kwargs(cfg(kafka__bootstrap="k:1", kafka__securityProtocol="SASL_PLAINTEXT"))


def test_tls_bad_ca_file_is_one_line_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"kafka\.tls"):
        client_kwargs(cfg(kafka__bootstrap="k:1", kafka__securityProtocol="SSL",
                          kafka__tls__caFile=str(bad)))


def test_tls_cert_without_key() -> None:
    with pytest.raises(ConfigError, match="together"):
        client_kwargs(cfg(kafka__bootstrap="k:1", kafka__securityProtocol="SSL",
                          kafka__tls__certFile="/x.pem"))


def test_consumer_commits_manually() -> None:
    kw = consumer_kwargs(cfg(kafka__bootstrap="k:1"), "archiver")
    assert kw["group_id"] == "archiver" and kw["enable_auto_commit"] is False


def test_topic_specs_follow_the_values_file() -> None:
    specs = {t.name: t for t in topic_specs(cfg(kafka__topics__packets__partitions=3,
                                                  tap__capture__raw__storageSize="10Mi"))}
    assert set(specs) == set(ALL_TOPICS)
    assert specs[PACKETS].num_partitions == 3
    assert specs[PACKETS].topic_configs["retention.bytes"] == str(10 * 1024 * 1024)
    assert specs[K8S].topic_configs["cleanup.policy"] == "compact"


def test_replication_follows_the_cluster_unless_configured() -> None:
    one = {t.name: t for t in topic_specs(cfg(), brokers=1)}
    assert {t.replication_factor for t in one.values()} == {1}
    assert "min.insync.replicas" not in one[PACKETS].topic_configs  # one broker: as before
    three = {t.name: t for t in topic_specs(cfg(), brokers=3)}
    assert {t.replication_factor for t in three.values()} == {3}
    assert {t.topic_configs["min.insync.replicas"] for t in three.values()} == {"2"}
    two = topic_specs(cfg(kafka__topics__replicationFactor=2), brokers=3)
    assert {(t.replication_factor, t.topic_configs["min.insync.replicas"]) for t in two} == {(2, "1")}
    pinned = topic_specs(cfg(kafka__topics__replicationFactor=3, kafka__topics__minInsyncReplicas=3),
                         brokers=5)
    assert {t.topic_configs["min.insync.replicas"] for t in pinned} == {"3"}


def test_a_negative_replication_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.topics\.replicationFactor.*non-negative"):
        cfg(kafka__topics__replicationFactor=-1)
