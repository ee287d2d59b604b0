"""Why a secured Kafka said no, in one line: a wrong password, an untrusted CA, a denied topic.

aiokafka reports a failed TLS handshake or SASL login as "Unable to bootstrap from [...]" (the
cause only in its log), and a missing ACL as an exception class. :func:`kafka_cause` turns
either into one sentence naming the cause; for the first it asks the broker again itself
(:func:`probe`: a TLS handshake with the configured CA, then SaslHandshake v1 and
SaslAuthenticate v1 with the configured mechanism, SCRAM-SHA-256/512 or PLAIN) and reports
what failed. It never prints a password or key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
from typing import Any

from schemas.errors import ConfigError

from ..config import Config
from ._codec import _Reader, request_header, string

__all__ = ("kafka_cause", "probe", "scram_client_final")

_CLIENT = string("rawcap-probe")
_AUTHZ = {29: "topic", 30: "consumer group", 31: "cluster", 53: "transactional id"}
_UNSUPPORTED_MECHANISM, _AUTH_FAILED, _ILLEGAL_STATE = 33, 58, 34


def _walk(exc: BaseException) -> list[BaseException]:
    """``exc``, the members of exception groups, and causes/contexts, depth first."""
    out: list[BaseException] = []
    todo = [exc]
    while todo and len(out) < 50:
        e = todo.pop()
        if any(e is seen for seen in out):
            continue
        out.append(e)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(reversed(e.exceptions))
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                todo.append(nxt)
    return out


def _user(cfg: Config) -> str:
    if str(cfg.get("kafka.securityProtocol")).startswith("SASL_"):
        return f"user {cfg.get('kafka.sasl.username')!r}"
    return "this client"


def kafka_cause(exc: BaseException, cfg: Config | None) -> str | None:
    """One line saying why Kafka refused, or None when ``exc`` is not such a refusal."""
    if cfg is None:
        return None
    for e in _walk(exc):
        code = getattr(e, "errno", None)
        if type(e).__module__.startswith("aiokafka") and code in _AUTHZ:
            what = _AUTHZ[code]
            names = ", ".join(sorted(str(a) for a in _flat(e.args[1:] if len(e.args) > 1 else e.args)
                                     if a and not str(a).startswith("[Error")))
            name = f" {names}" if names else ""
            return (f"Kafka denied {_user(cfg)} access to {what}{name} (no ACL allows it): "
                    "grant one, or use the values file of a user that has it")
    text = " ".join(str(e) for e in _walk(exc))
    if "Unable to bootstrap" in text or "cannot reach Kafka" in text or \
            "KafkaConnectionError" in text or "Authentication" in text:
        if cfg.get("kafka.securityProtocol") != "PLAINTEXT":
            try:
                return probe(cfg)
            except ConfigError as cexc:
                return str(cexc)
    return None


def _flat(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, set | list | tuple | frozenset):
            out.extend(a)
        else:
            out.append(a)
    return out


# -- the probe: TLS, then SASL, with the client's own settings -------------------------------
class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.corr = 0

    def call(self, api_key: int, version: int, body: bytes) -> bytes:
        self.corr += 1
        msg = request_header(api_key, version, self.corr, _CLIENT) + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._read(4))[0]
        resp = self._read(size)
        return resp[4:]  # correlation id

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
        return buf


def _authenticate(conn: _Conn, payload: bytes) -> tuple[int, str | None, bytes]:
    """SaslAuthenticate v1: (error code, error message, auth bytes)."""
    r = _Reader(conn.call(36, 1, struct.pack(">i", len(payload)) + payload), 0)
    code, message, n = r.i16(), r.string(), r.i32()
    return code, message, bytes(r.buf[r.pos:r.pos + max(0, n)])


def scram_client_final(mechanism: str, password: str, client_first_bare: str,
                       server_first: str) -> str:
    """The SCRAM client-final message (RFC 5802) for ``server_first``: channel binding none,
    the combined nonce and the client proof."""
    algo = hashlib.sha512 if mechanism.endswith("512") else hashlib.sha256
    fields = dict(p.split("=", 1) for p in server_first.split(",") if "=" in p)
    salted = hashlib.pbkdf2_hmac(algo().name, password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", algo).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth = f"{client_first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(algo(client_key).digest(), auth, algo).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{final_bare},p={base64.b64encode(proof).decode()}"


def _scram(conn: _Conn, mechanism: str, user: str, password: str) -> tuple[int, str | None]:
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    name = user.replace("=", "=3D").replace(",", "=2C")
    first_bare = f"n={name},r={nonce}"
    code, message, server_first = _authenticate(conn, f"n,,{first_bare}".encode())
    if code:
        return code, message
    final = scram_client_final(mechanism, password, first_bare, server_first.decode())
    code, message, _ = _authenticate(conn, final.encode())
    return code, message


def probe(cfg: Config, timeout: float = 10.0) -> str | None:
    """Connect to the first bootstrap server as the client would; the reason it is refused
    (one line), or None when TLS and SASL both succeed or the server cannot be reached."""
    from ._clients import client_kwargs

    kw = client_kwargs(cfg)
    protocol = kw["security_protocol"]
    host_port = kw["bootstrap_servers"][0]
    host, _, port = host_port.rpartition(":")
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError):
        return None
    with raw:
        sock: socket.socket = raw
        if protocol in ("SSL", "SASL_SSL"):
            ca = cfg.get("kafka.tls.caFile") or "the system CA store"
            try:
                sock = kw["ssl_context"].wrap_socket(raw, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                return (f"TLS: the certificate of the Kafka broker at {host_port} is not trusted "
                        f"by kafka.tls.caFile ({ca}): {exc.verify_message}")
            except (ssl.SSLError, OSError) as exc:
                return f"TLS handshake with the Kafka broker at {host_port} failed: {exc}"
        with sock:
            sock.settimeout(timeout)
            if not protocol.startswith("SASL_"):
                return None
            conn = _Conn(sock)
            mechanism = kw["sasl_mechanism"]
            user, password = kw["sasl_plain_username"], kw["sasl_plain_password"] or ""
            try:
                r = _Reader(conn.call(17, 1, string(mechanism)), 0)  # SaslHandshake v1
                code = r.i16()
                if code == _UNSUPPORTED_MECHANISM:
                    offered = [r.string() or "" for _ in range(max(0, r.i32()))]
                    return (f"SASL: the Kafka broker at {host_port} does not offer "
                            f"kafka.sasl.mechanism {mechanism} (it offers {', '.join(offered)})")
                if code:
                    return f"SASL handshake with the Kafka broker at {host_port} failed: error {code}"
                if mechanism.startswith("SCRAM-"):
                    code, message = _scram(conn, mechanism, user, password)
                else:
                    code, message, _ = _authenticate(
                        conn, b"\0" + user.encode() + b"\0" + password.encode())
            except (OSError, ConnectionError, struct.error, KeyError, ValueError) as exc:
                return f"SASL login at the Kafka broker at {host_port} failed: {exc}"
            if code == _AUTH_FAILED:
                return (f"SASL authentication as {user!r} ({mechanism}) failed at the Kafka broker "
                        f"at {host_port}: wrong kafka.sasl.username or kafka.sasl.password")
            if code:
                return f"SASL login at the Kafka broker at {host_port} failed: error {code} ({message})"
    return None
