"""Workload names on calls: loading/following ``rawcap.k8s`` for the dissector, and the
``rawcap calls --namespace/--pod`` filter over the stored names.

Resolution itself is ``rawcap.workloads`` (the same index and as-of-time lookup as
``rawcap enrich`` and forensics); :class:`dissector._run.CallOutput` fills the four
``Call`` fields as each call leaves the dissector, before it is printed, stored or
produced. Kafka and aiokafka are imported only when names are asked for.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from rawcap.config import Config
from schemas import topics
from schemas.calls import Call
from schemas.errors import ConfigError, TransportError

if TYPE_CHECKING:
    from rawcap.workloads import Workloads

__all__ = ("CallFilter", "follow_workloads", "load_workloads")

log = logging.getLogger("rawcap.dissector")

#: ``--follow`` waits this long for ``rawcap.k8s`` to be read to its end before dissecting
READY_WAIT_S = 30.0


async def load_workloads(cfg: Config, wanted: bool | None) -> Workloads | None:
    """``rawcap.k8s`` read once (range replay, ``--pcap --k8s``).

    ``wanted`` is the ``--k8s/--no-k8s`` switch: False -> None (no names); True -> the
    topic must be readable (an error otherwise); None (the Kafka-source default) -> an
    unreachable topic is a warning and calls keep empty names. An empty or missing topic
    is never an error: nothing is attributed.
    """
    if wanted is False:
        return None
    from rawcap.workloads import Workloads

    try:
        wl = await Workloads.load(cfg)
    except TransportError as exc:
        if wanted:
            raise
        log.warning("no workload names on calls: %s", exc)
        return None
    log.info("workloads loaded", extra={"records": wl.records, "bad": wl.bad,
                                        **wl.index.stats()})
    return wl


async def follow_workloads(wl: Workloads, cfg: Config, ready: anyio.Event) -> None:
    """Keep ``wl`` following ``rawcap.k8s`` until cancelled (``--follow``'s task group).

    A Kafka error is logged and the read restarts from the beginning after a growing delay
    (re-applying records is idempotent); calls dissected meanwhile are named from what was
    already known.
    """
    from aiokafka.errors import KafkaError

    delay = 1.0
    while True:
        try:
            await wl.follow(cfg, ready)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("reading %s failed (%r); retrying in %.0fs", topics.K8S, exc, delay)
        await anyio.sleep(delay)
        delay = min(delay * 2, 30.0)


class CallFilter:
    """``rawcap calls --namespace NS --pod REGEX`` over a call's stored workload fields.

    The rules of ``rawcap.workloads.WorkloadFilter`` (and ``rawcap flows``), applied to the
    names resolved when the call was dissected: several namespaces or several regexes are
    alternatives; either end may match; namespace and pod given together must hold for the
    same end; a namespace matches pods and services (``service/NAME``), ``--pod`` pod names
    only (not ``service/...`` or ``node/...``). A call without names matches nothing.
    """

    __slots__ = ("namespaces", "pods")

    def __init__(self, namespaces: Sequence[str] = (), pods: Sequence[str] = ()) -> None:
        self.namespaces = frozenset(n for n in namespaces if n)
        self.pods: list[re.Pattern[str]] = []
        for text in pods:
            try:
                self.pods.append(re.compile(text))
            except re.error as exc:
                raise ConfigError(f"--pod {text!r} is not a valid regular expression: {exc}") \
                    from None

    @property
    def empty(self) -> bool:
        return not (self.namespaces or self.pods)

    def end(self, workload: str, namespace: str) -> bool:
        """Whether one end (its stored workload name and namespace) satisfies the filter."""
        if not workload:
            return False
        if self.pods and ("/" in workload or not any(p.search(workload) for p in self.pods)):
            return False  # pod names have no "/"; service/NAME and node/NAME are not pods
        return not (self.namespaces and namespace not in self.namespaces)

    def __call__(self, c: Call) -> bool:
        return self.empty or self.end(c.src_workload, c.src_namespace) or \
            self.end(c.dst_workload, c.dst_namespace)

