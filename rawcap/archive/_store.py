"""Archive access through obstore: one URL (``s3://``, ``gs://``, ``az://``, ``file://``),
errors as one-line rawcap errors, async calls for the writer and blocking ones for the
reader's threads, and the index lookups of a time window."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import urlparse

import anyio

from schemas.errors import ConfigError, RawcapError, TransportError

from ..config import Config
from ._layout import IndexEntry, escape_node, hour_path, parse_hour_path

_T = TypeVar("_T")

__all__ = ("SCHEMES", "AccessDenied", "ArchiveStore", "ObjectMissing")

log = logging.getLogger("rawcap.archive")

SCHEMES: Final = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "file")
_AUTH_FAILURE = re.compile(
    r"<Code>(AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId|ExpiredToken|InvalidToken|"
    r"AuthorizationHeaderMalformed|AuthenticationFailed|AuthorizationFailure)</Code>"
    r"|status code: (401|403)\b"
)


class ObjectMissing(RawcapError):
    """An object (or the bucket) the operation needs does not exist."""


class AccessDenied(RawcapError):
    """The store refused the credentials or the operation."""



def _first_line(exc: BaseException) -> str:
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    msg = re.search(r"<Message>([^<]+)</Message>", text)
    if code:
        return code.group(1) + (f": {msg.group(1)}" if msg else "")
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


class ArchiveStore:
    """One archive URL opened with obstore; errors come out as rawcap errors.

    Credentials and endpoints come from each cloud's usual environment (``AWS_*``,
    ``GOOGLE_*``, ``AZURE_*``; see docs/archiver.md). obstore retries a failed request a few
    times itself; longer outages are the caller's to wait out (:attr:`TransportError.retriable`).
    """

    def __init__(self, url: str, *, request_timeout: float = 120.0) -> None:
        import obstore
        from obstore.store import LocalStore, from_url

        self._ob = obstore
        if not url:
            raise ConfigError(
                "archive.url is not set: pass --url s3://BUCKET/PREFIX (or gs://, az://, file://) "
                "or set RAWCAP_ARCHIVE_URL"
            )
        self.url = url
        parsed = urlparse(url)
        self.scheme = parsed.scheme.lower()
        if self.scheme not in SCHEMES:
            what = f"unknown scheme {parsed.scheme + '://'!r}" if parsed.scheme else "no scheme"
            raise ConfigError(
                f"archive.url {url!r} is invalid ({what}): expected s3://BUCKET/PREFIX, "
                "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or file:///DIR"
            )
        self.bucket = parsed.netloc
        self.endpoint = ""
        if self.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ConfigError(f"archive.url {url!r} is invalid: file URLs are file:///absolute/dir")
            root = parsed.path
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"archive.url {url}: cannot create directory: {exc.strerror}") from None
            self.store: Any = LocalStore(root)
            return
        if not self.bucket:
            raise ConfigError(f"archive.url {url!r} is invalid: no bucket/container name")
        client: dict[str, Any] = {"timeout": f"{int(request_timeout)}s", "connect_timeout": "5s"}
        config: dict[str, Any] = {}
        if self.scheme in ("s3", "s3a"):
            self.endpoint = (
                os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("AWS_ENDPOINT")
                or ""
            )
            if self.endpoint.startswith("http://"):
                client["allow_http"] = True
            if self.endpoint and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
                config["region"] = "us-east-1"
        elif self.scheme in ("az", "azure") and "@" not in self.bucket:
            if not os.environ.get("AZURE_STORAGE_ACCOUNT_NAME"):
                raise ConfigError(
                    f"archive.url {url}: set AZURE_STORAGE_ACCOUNT_NAME (and a key, SAS token or "
                    "workload identity) for az:// URLs"
                )
        retry = {
            "max_retries": 3,
            "retry_timeout": dt.timedelta(seconds=20),
            "backoff": {
                "init_backoff": dt.timedelta(milliseconds=100),
                "max_backoff": dt.timedelta(seconds=2),
            },
        }
        try:
            build: Any = from_url
            self.store = build(url, config=config or None, client_options=client, retry_config=retry)
        except Exception as exc:
            raise ConfigError(f"archive.url {url}: {_first_line(exc)}") from None

    @classmethod
    def from_config(cls, cfg: Config, url: str | None = None) -> ArchiveStore:
        return cls(url or cfg.get("archive.url"))

    def where(self) -> str:
        return f"{self.url}" + (f" at {self.endpoint}" if self.endpoint else "")

    def error(self, exc: BaseException, op: str, key: str) -> RawcapError:
        """Map an obstore error to a rawcap error whose message is one line."""
        if isinstance(exc, RawcapError):
            return exc
        name = type(exc).__name__
        what = f"{op} {key}" if key else op
        if isinstance(exc, FileNotFoundError) or name == "NotFoundError":
            if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
                return ObjectMissing(f"archive bucket {self.bucket!r} does not exist ({self.where()})")
            return ObjectMissing(f"archive {self.url}: {what}: no such object")
        denied = name in ("PermissionDeniedError", "UnauthenticatedError") or isinstance(exc, PermissionError)
        if denied or _AUTH_FAILURE.search(str(exc)):
            return AccessDenied(
                f"archive {self.where()}: access denied ({_first_line(exc)}): check the credentials "
                "and the bucket policy"
            )
        return TransportError(f"archive {self.where()}: {what} failed: {_first_line(exc)}")

    # async (writer) ------------------------------------------------------------------------
    async def put(self, key: str, data: bytes | memoryview | Sequence[bytes | memoryview]) -> None:
        """One object; a sequence of buffers is uploaded as their concatenation, without
        joining them here (obstore copies them into its parts off the GIL)."""
        try:
            await self._ob.put_async(self.store, key, data)
        except Exception as exc:
            raise self.error(exc, "PUT", key) from None

    async def delete(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            try:
                await self._ob.delete_async(self.store, chunk)
            except FileNotFoundError:
                for k in chunk:  # the local store refuses a batch with a missing file in it
                    try:
                        await self._ob.delete_async(self.store, k)
                    except FileNotFoundError:
                        pass
            except Exception as exc:
                raise self.error(exc, "DELETE", chunk[0]) from None

    async def alist(self, prefix: str) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self.list_objects, prefix)

    async def alist_dirs(self, prefix: str) -> list[str]:
        return await anyio.to_thread.run_sync(self.list_dirs, prefix)

    async def aget(self, key: str) -> bytes:
        return await anyio.to_thread.run_sync(self.get, key)

    async def probe(self) -> None:
        """Write, read back and delete a small object: fail fast on a missing bucket or bad
        credentials (non-retriable errors) before anything is consumed."""
        key = f"_rawcap/probe-{os.getpid()}-{os.urandom(4).hex()}"
        body = b"rawcap archive write probe\n"
        await self.put(key, body)
        got = await self.aget(key)
        if got != body:
            raise TransportError(f"archive {self.where()}: probe object read back differs")
        await self.delete([key])

    # sync (reader threads) -----------------------------------------------------------------
    def get(self, key: str) -> bytes:
        try:
            return bytes(self._ob.get(self.store, key).bytes())
        except Exception as exc:
            raise self.error(exc, "GET", key) from None

    def get_range(self, key: str, start: int, end: int) -> memoryview:
        try:
            return memoryview(self._ob.get_range(self.store, key, start=start, end=end))
        except Exception as exc:
            raise self.error(exc, "GET", key) from None

    def _listing(self, prefix: str, call: Callable[[], _T], empty: _T) -> _T:
        """``call()``, a LIST of ``prefix``: ``empty`` when the prefix does not exist (a
        local directory), one-line rawcap errors otherwise (a missing bucket among them)."""
        try:
            return call()
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
                raise self.error(exc, "LIST", prefix) from None
            return empty
        except Exception as exc:
            raise self.error(exc, "LIST", prefix) from None

    def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        def listed() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for chunk in self._ob.list(self.store, prefix or None, chunk_size=1000):
                out.extend(dict(m) for m in chunk)
            return out

        return self._listing(prefix, listed, [])

    def list_dirs(self, prefix: str) -> list[str]:
        res: dict[str, Any] = self._listing(
            prefix, lambda: self._ob.list_with_delimiter(self.store, prefix or None), {"common_prefixes": []})
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in res["common_prefixes"]]

    # reading helpers ---------------------------------------------------------------------
    def hours_present(self, lo_hour: int, hi_hour: int) -> list[int]:
        """Hours in ``[lo_hour, hi_hour]`` that have an index directory (two small listings
        per day for wide windows; a plain enumeration for windows up to two days)."""
        if hi_hour - lo_hour <= 48:
            return list(range(lo_hour, hi_hour + 1))
        out: list[int] = []
        for date in sorted(self.list_dirs("index")):
            date = str(date)
            try:
                day = parse_hour_path(date, "hour=00")
            except ValueError:
                continue
            if day + 23 < lo_hour or day > hi_hour:
                continue
            for h in sorted(self.list_dirs(f"index/{date}")):
                try:
                    hour = parse_hour_path(date, h)
                except ValueError:
                    continue
                if lo_hour <= hour <= hi_hour:
                    out.append(hour)
        return out

    def index_keys(self, hour: int, nodes: Iterable[str] | None) -> list[str]:
        base = f"index/{hour_path(hour)}"
        if nodes is None:
            metas = self.list_objects(base)
        else:
            metas = [m for n in nodes for m in self.list_objects(f"{base}/node={escape_node(n)}")]
        return sorted(m["path"] for m in metas if m["path"].endswith(".json"))

    def load_index(self, key: str) -> IndexEntry | None:
        try:
            return IndexEntry.from_json(self.get(key), key)
        except ObjectMissing:
            log.warning("archive index object vanished (retention?): %s", key)
            return None
