"""``rawcap.kafka``'s refusal diagnostics (``_diag.py``): one line for a Kafka refusal (the
broker-side cases are in tests/stack/test_cluster.py, against the real secured cluster)."""

from __future__ import annotations

from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from rawcap.config import Config, load_config
from rawcap.kafka import kafka_cause, probe, scram_client_final
from schemas.errors import TransportError


def cfg(**kw: str) -> Config:
    return load_config(overrides={k.replace("__", "."): v for k, v in kw.items()}, env={})


def test_scram_sha256_client_final_is_rfc7677s() -> None:
    # RFC 7677, section 3: user "user", password "pencil"
    final = scram_client_final(
        "SCRAM-SHA-256", "pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO",
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")


def test_a_denied_topic_inside_a_task_group_names_user_and_topic() -> None:
    c = cfg(kafka__bootstrap="k:1", kafka__securityProtocol="SASL_SSL",
            kafka__sasl__username="rawcap-capture", kafka__sasl__password="secret")
    exc = BaseExceptionGroup("tg", [ValueError("x"), TopicAuthorizationFailedError("rawcap.flows")])
    line = kafka_cause(exc, c)
    assert line == ("Kafka denied user 'rawcap-capture' access to topic rawcap.flows (no ACL "
                    "allows it): grant one, or use the values file of a user that has it")
    assert "secret" not in line


def test_a_denied_group_on_plaintext_names_the_group() -> None:
    line = kafka_cause(GroupAuthorizationFailedError("rawcap-archiver"), cfg(kafka__bootstrap="k:1"))
    assert line is not None and "this client access to consumer group rawcap-archiver" in line


def test_other_errors_are_not_refusals() -> None:
    c = cfg(kafka__bootstrap="127.0.0.1:1")
    assert kafka_cause(ValueError("boom"), c) is None
    assert kafka_cause(TopicAuthorizationFailedError("t"), None) is None
    # plaintext: an unreachable broker is not explained away (the original message stands)
    assert kafka_cause(KafkaConnectionError("Unable to bootstrap from [...]"), c) is None


def test_an_unreachable_secured_broker_is_left_to_the_original_message() -> None:
    c = cfg(kafka__bootstrap="127.0.0.1:1", kafka__securityProtocol="SASL_SSL",
            kafka__sasl__username="u", kafka__sasl__password="p")
    assert probe(c, timeout=2) is None
    assert kafka_cause(TransportError("cannot reach Kafka at 127.0.0.1:1: ..."), c) is None
