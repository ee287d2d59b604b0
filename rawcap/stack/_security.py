"""``stack up --secure``: a CA, the brokers' certificate, SCRAM users and their ACLs.

What a secured local stack is made of, all under ``<dataDir>/security``:

- ``ca.pem`` / ``ca.key``: a CA made on the spot with ``openssl`` (EC P-256, 10 years);
  ``broker.p12``: the brokers' key and certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``;
  server and client use), in a PKCS#12 store whose password is in ``secrets.json``.
- ``secrets.json`` (0600): the SCRAM-SHA-512 password of every user and the key store's;
  the keys are 0600 too, the certificates 0644 (any local user's client needs the CA).

The listeners: clients and brokers speak SASL_SSL with SCRAM-SHA-512 on the one port each
broker advertises (the plaintext listener is off); the KRaft controller listener is SSL with
client certificates required (mutual TLS: only a holder of the broker key joins the quorum,
so nothing on loopback can use it to skip the ACLs). The users are written into the
metadata log when storage is formatted (``--add-scram``, through a Java argument file so
that no password is ever on a command line); the ACLs are created through the admin API by
the stack right after start (``StandardAuthorizer``, nothing allowed without an ACL).

Users: ``rawcap`` is the operator (a super user, what ``stack status`` prints and
``<dataDir>/client.yaml`` holds, like MinIO's root key); ``rawcap-broker`` is the brokers'
own; every service has a user of its own that may touch only its topics and group, with a
values file ``<dataDir>/clients/<service>.yaml``.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import RawcapError
from schemas.topics import CALLS, CONTROL, DLQ, FLOWS, K8S, PACKETS, PROCS

__all__ = ("ADMIN_USER", "BROKER_USER", "MECHANISM", "SERVICE_ACLS", "Security")

MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "rawcap"
BROKER_USER = "rawcap-broker"
_BROKER_CN = "rawcap-broker"

#: Per service user: (topics it reads, topics it writes, consumer groups it uses).
#: Capture reads its own partition's tail back (the shipper's resume check) and the
#: control topic (filters); consumers write corrupt batches to the DLQ.
SERVICE_ACLS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "capture": ((PACKETS, CONTROL), (PACKETS, PROCS), ()),
    "archive": ((PACKETS,), (DLQ,), ("rawcap-archiver",)),
    "dissect": ((PACKETS, CONTROL, K8S), (CALLS, DLQ, CONTROL), ("rawcap-dissector",)),
    "enrich": ((PACKETS, K8S, PROCS), (FLOWS, DLQ), ("rawcap-enrich",)),
    "k8s-watch": ((K8S, CONTROL), (K8S, CONTROL), ()),
    "forensics": ((PACKETS, K8S, FLOWS, CALLS, PROCS, CONTROL), (PACKETS,), ()),
}

# Kafka's AclOperation / ResourceType / PatternType / Permission codes (CreateAcls).
_OP = {"READ": 3, "WRITE": 4, "DESCRIBE": 8}
_TOPIC, _GROUP = 2, 3
_LITERAL, _ALLOW = 3, 3


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RawcapError(f"openssl {args[0]} failed while making the stack's certificates: {last}")


@dataclass
class Security:
    """The secured stack's files and users, made once and kept (``ensure()``)."""

    root: Path

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.root / "broker.p12"

    @property
    def _secrets_file(self) -> Path:
        return self.root / "secrets.json"

    def exists(self) -> bool:
        return self.keystore.exists() and self._secrets_file.exists()

    def secrets(self) -> dict[str, Any]:
        try:
            doc = json.loads(self._secrets_file.read_text())
        except (OSError, ValueError) as exc:
            raise RawcapError(f"{self._secrets_file} is unreadable ({exc}): delete the stack's "
                              "data directory to make new certificates and users") from None
        return doc if isinstance(doc, dict) else {}

    def password(self, user: str) -> str:
        return str(self.secrets()["users"][user])

    def users(self) -> dict[str, str]:
        """Every SCRAM user and its password (the brokers', the operator's, the services')."""
        return dict(self.secrets()["users"])

    @staticmethod
    def service_user(service: str) -> str:
        return f"rawcap-{service}"

    def ensure(self) -> None:
        """Make the CA, the broker key store and the users' passwords unless they exist."""
        if self.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        users = {BROKER_USER: secrets.token_urlsafe(18), ADMIN_USER: secrets.token_urlsafe(18)}
        users.update({self.service_user(s): secrets.token_urlsafe(18) for s in SERVICE_ACLS})
        store_pass = secrets.token_urlsafe(18)
        old = os.umask(0o077)
        try:
            passfile = self.root / ".storepass"
            passfile.write_text(store_pass)
            (self.root / "broker.ext").write_text(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n")
            ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
            _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
                     "-subj", "/CN=rawcap local stack CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.root)
            _openssl("req", *ec, "-keyout", "broker.key", "-out", "broker.csr",
                     "-subj", f"/CN={_BROKER_CN}", cwd=self.root)
            _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                     "-CAcreateserial", "-out", "broker.pem", "-days", "3650",
                     "-extfile", "broker.ext", cwd=self.root)
            _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
                     "-certfile", "ca.pem", "-name", "broker", "-out", "broker.p12.tmp",
                     "-passout", "file:.storepass", cwd=self.root)
            (self.root / "broker.p12.tmp").replace(self.keystore)
            passfile.unlink()
            for leftover in ("broker.csr", "broker.ext", "broker.key"):
                (self.root / leftover).unlink(missing_ok=True)
            tmp = self._secrets_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"keystore": store_pass, "users": users}, indent=2) + "\n")
            tmp.replace(self._secrets_file)
            for public in (self.ca_file, self.root / "broker.pem"):
                public.chmod(0o644)  # certificates: any local user's client may need the CA
        finally:
            os.umask(old)

    # --- what the brokers need ----------------------------------------------------------
    def broker_props(self, port: int, controller_port: int) -> dict[str, str]:
        """server.properties entries of a secured broker (written to a 0600 file)."""
        store_pass = str(self.secrets()["keystore"])
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{BROKER_USER}" password="{self.password(BROKER_USER)}";')
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "listener.name.controller.ssl.client.auth": "required",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": store_pass,
            "ssl.key.password": store_pass,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{BROKER_USER};User:{ADMIN_USER};User:CN={_BROKER_CN}",
        }

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that create every SCRAM user (secret: these go
        into a Java argument file, never onto a command line)."""
        out: list[str] = []
        for user, password in self.users().items():
            out += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        return out

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx

    # --- what clients need ----------------------------------------------------------------
    def client_values(self, bootstrap: str, user: str) -> dict[str, Any]:
        """A values-file tree (``kafka.*``) with which ``user`` reaches the stack."""
        return {"kafka": {
            "bootstrap": bootstrap, "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": MECHANISM, "username": user, "password": self.password(user)},
            "tls": {"caFile": str(self.ca_file)},
        }}

    def acl_creations(self) -> list[tuple[int, str, int, str, str, int, int]]:
        """CreateAcls v1 entries: each service user may use only its topics and groups."""
        out = []
        for service, (reads, writes, groups) in SERVICE_ACLS.items():
            principal = f"User:{self.service_user(service)}"
            wanted: set[tuple[int, str, str]] = set()
            for t in reads:
                wanted |= {(_TOPIC, t, "READ"), (_TOPIC, t, "DESCRIBE")}
            for t in writes:
                wanted |= {(_TOPIC, t, "WRITE"), (_TOPIC, t, "DESCRIBE")}
            for g in groups:
                wanted |= {(_GROUP, g, "READ"), (_GROUP, g, "DESCRIBE")}
            for rtype, name, op in sorted(wanted):
                out.append((rtype, name, _LITERAL, principal, "*", _OP[op], _ALLOW))
        return out
