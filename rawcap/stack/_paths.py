"""Where the stack's binaries (installed by compose/install-stack.sh) and data live."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from schemas.errors import RawcapError

__all__ = ("cache_dir", "default_data_dir", "find_kafka_jars", "find_minio", "read_state")

_REPO = Path(__file__).resolve().parents[2]
_HINT = "run `make setup` (or compose/install-stack.sh)"


def cache_dir() -> Path:
    """``$RAWCAP_STACK_CACHE``, else ``compose/.cache`` of the checkout rawcap runs from."""
    env = os.environ.get("RAWCAP_STACK_CACHE")
    return Path(env) if env else _REPO / "compose" / ".cache"


def default_data_dir(configured: str = "") -> Path:
    """``stack.dataDir``, else ``$RAWCAP_STACK_DIR``, else ``./.rawcap/stack``."""
    text = configured or os.environ.get("RAWCAP_STACK_DIR") or ".rawcap/stack"
    return Path(text).expanduser().resolve()


def find_kafka_jars() -> Path:
    """The newest ``kafka-<version>/jars`` directory that holds the broker jar."""
    candidates = sorted(
        (p for p in cache_dir().glob("kafka-*/jars") if any(p.glob("kafka_2.13-*.jar"))),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name[6:].split(".")],
    )
    if not candidates:
        raise RawcapError(f"Kafka jars not found under {cache_dir()}: {_HINT}")
    return candidates[-1]


def find_minio() -> Path:
    local = cache_dir() / "bin" / "minio"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("minio")
    if found:
        return Path(found)
    raise RawcapError(f"minio not found in {local.parent} or on PATH: {_HINT}")


def read_state(path: Path) -> dict[str, Any]:
    """A JSON state file (ports, credentials) as a dict; {} when it does not exist yet."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RawcapError(f"{path} is unreadable ({exc}): fix or delete it") from None
    return state if isinstance(state, dict) else {}
