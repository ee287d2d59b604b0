"""The local S3-compatible store: a MinIO server process (built from the Go module proxy).

The bucket is created with one SigV4-signed ``PUT /bucket``; no MinIO client is needed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import RawcapError, TransportError

from . import _proc
from ._paths import find_minio

__all__ = ("REGION", "S3Server", "create_bucket", "s3_answers")

REGION = "us-east-1"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def s3_answers(endpoint: str, timeout: float = 1.0) -> bool:
    """True when MinIO's liveness probe answers 200."""
    try:
        with urllib.request.urlopen(f"{endpoint}/minio/health/live", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _signed_request(endpoint: str, method: str, path: str, access_key: str,
                    secret_key: str) -> urllib.request.Request:
    now = dt.datetime.now(dt.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = endpoint.split("://", 1)[1].rstrip("/")
    headers = {"host": host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, _EMPTY_SHA256,
    ])
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(f"AWS4{secret_key}".encode(), day), REGION), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{endpoint}{path}", method=method)
    req.add_header("x-amz-content-sha256", _EMPTY_SHA256)
    req.add_header("x-amz-date", amz_date)
    req.add_header("Authorization", f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
    return req


def create_bucket(endpoint: str, bucket: str, access_key: str, secret_key: str) -> bool:
    """Create ``bucket``; False if it already existed. Raises RawcapError on other errors."""
    req = _signed_request(endpoint, "PUT", f"/{bucket}", access_key, secret_key)
    try:
        with urllib.request.urlopen(req, timeout=10):
            return True
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 409 and "BucketAlreadyOwnedByYou" in body:
            return False
        error = TransportError if exc.code >= 500 else RawcapError  # 503: still starting
        raise error(f"creating bucket {bucket!r} at {endpoint} failed: HTTP {exc.code}") from None
    except OSError as exc:
        raise TransportError(f"creating bucket {bucket!r} at {endpoint} failed: {exc}") from None


@dataclass
class S3Server:
    """One MinIO process whose objects live under ``root`` (``<dataDir>/s3``)."""

    root: Path
    port: int
    console_port: int
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def _pid_file(self) -> Path:
        return self.root / "minio.pid"

    @property
    def _marker(self) -> str:
        return str(self.root / "data")

    def pid(self) -> int | None:
        return _proc.running_pid(self._pid_file, self._marker)

    def answers(self) -> bool:
        return s3_answers(self.endpoint)

    def start(self) -> None:
        if self.pid() is not None:
            return
        if _proc.port_open(self.port):
            raise RawcapError(f"port {self.port} is already in use: pick another with --s3-port")
        if _proc.port_open(self.console_port):
            self.console_port = _proc.free_port()
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        env = {
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "off",
            "MINIO_REGION": REGION,
        }
        argv = [str(find_minio()), "server", str(self.root / "data"), "--quiet",
                "--address", f"127.0.0.1:{self.port}",
                "--console-address", f"127.0.0.1:{self.console_port}"]
        _proc.spawn(argv, log_file=self.log_file, pid_file=self._pid_file, env=env)

    def stop(self, timeout: float = 30.0) -> bool:
        return _proc.stop(self._pid_file, self._marker, timeout)
