"""Leader election through a ``coordination.k8s.io/v1`` Lease, for ``k8s-watch --leader-elect``.

The protocol is client-go's: a candidate creates the Lease or, when the holder has not renewed
it for ``leaseDurationSeconds`` *as observed on this candidate's own clock* (so clock skew
between nodes does not matter), takes it over with an update that carries the Lease's
``resourceVersion`` (two candidates racing: the API server accepts one, the other gets 409).
The leader renews every ``retry_period``; when it cannot renew within ``renew_deadline`` it
stops leading. A leader that stops on purpose (SIGTERM) releases the Lease, so a standby takes
over at its next try instead of after a whole lease duration.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from schemas.errors import ConfigError, TransportError

if TYPE_CHECKING:
    from kubernetes_asyncio import client

__all__ = ("LeaseElector",)

log = logging.getLogger("rawcap.enrich.lease")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Runs ``lead()`` only while this candidate holds the Lease ``namespace/name``.

    ``run(lead)`` returns when ``lead`` returns (or raises); losing the Lease cancels ``lead``
    and makes this candidate a follower again. ``is_leader`` and ``transitions`` are for
    logs and tests.
    """

    def __init__(self, api: client.ApiClient, name: str, namespace: str, identity: str, *,
                 lease_duration: float = 15.0, renew_deadline: float | None = None,
                 retry_period: float | None = None) -> None:
        if lease_duration < 1:
            raise ConfigError(f"--lease-duration must be at least 1 s, not {lease_duration}")
        self.api, self.name, self.namespace, self.identity = api, name, namespace, identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline if renew_deadline is not None else lease_duration * 2 / 3
        self.retry_period = retry_period if retry_period is not None else lease_duration / 7.5
        self.is_leader = False
        self.transitions = 0
        self._observed: tuple[str, str, int] | None = None  # (holder, renewTime, leaseDuration)
        self._observed_at = 0.0

    # --- one API round ------------------------------------------------------------------
    async def _call(self, method: str, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        from kubernetes_asyncio import client

        api = client.CoordinationV1Api(self.api)
        resp = await getattr(api, method)(*args, _preload_content=False,
                                          _request_timeout=(5, max(self.renew_deadline, 5)), **kwargs)
        try:
            body = await resp.read()
            status = resp.status
        finally:
            resp.release()
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        if status in (401, 403):
            verb = {"read_namespaced_lease": "get", "create_namespaced_lease": "create",
                    "replace_namespaced_lease": "update"}[method]
            raise ConfigError(f"k8s-watch --leader-elect: may not {verb} Lease "
                              f"{self.namespace}/{self.name}: {doc.get('message') or f'HTTP {status}'}")
        return status, doc

    def _spec(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": acquire_time, "renewTime": _now(), "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this candidate holds the Lease afterwards."""
        status, lease = await self._call("read_namespaced_lease", self.name, self.namespace)
        if status == 404:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(_now(), 0)}
            status, _ = await self._call("create_namespaced_lease", self.namespace, body)
            if status == 409:
                return False  # another candidate created it first
            if not 200 <= status < 300:
                raise TransportError(f"creating Lease {self.namespace}/{self.name}: HTTP {status}")
            return True
        if not 200 <= status < 300:
            raise TransportError(f"reading Lease {self.namespace}/{self.name}: HTTP {status}")
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime") or "", int(spec.get("leaseDurationSeconds") or 0))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        ours = holder == self.identity
        if holder and not ours and now < self._observed_at + max(record[2], 1):
            return False  # held, and renewed within its duration as far as we have seen
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        lease["spec"] = self._spec(str(spec.get("acquireTime") or _now()) if ours else _now(), transitions)
        status, _ = await self._call("replace_namespaced_lease", self.name, self.namespace, lease)
        if status == 409:
            return False  # changed since we read it: someone else renewed or took it
        if not 200 <= status < 300:
            raise TransportError(f"updating Lease {self.namespace}/{self.name}: HTTP {status}")
        if not ours:
            log.info("leader election: took the lease", extra={
                "lease": f"{self.namespace}/{self.name}", "identity": self.identity,
                "previous": holder or None})
        return True

    async def release(self) -> None:
        """Give the Lease up (only if we still hold it), so that a standby need not wait."""
        status, lease = await self._call("read_namespaced_lease", self.name, self.namespace)
        spec = lease.get("spec") or {}
        if status != 200 or spec.get("holderIdentity") != self.identity:
            return
        spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now()})
        await self._call("replace_namespaced_lease", self.name, self.namespace, lease)

    # --- the loop -----------------------------------------------------------------------
    async def _attempt(self) -> bool:
        try:
            return await self.try_acquire_or_renew()
        except ConfigError:
            raise
        except (OSError, TimeoutError, TransportError) as exc:
            log.warning("leader election: API request failed",
                        extra={"error": str(exc) or type(exc).__name__})
            return False
        except Exception as exc:  # aiohttp.ClientError and friends (imported lazily)
            if type(exc).__module__.startswith("aiohttp"):
                log.warning("leader election: API request failed", extra={"error": str(exc)})
                return False
            raise

    async def run(self, lead: Callable[[], Awaitable[Any]]) -> None:
        while True:
            while not await self._attempt():  # noqa: ASYNC110 (polling the API server)
                await anyio.sleep(self.retry_period)
            self.is_leader = True
            self.transitions += 1
            log.info("leader election: leading", extra={"lease": f"{self.namespace}/{self.name}",
                                                         "identity": self.identity})
            done = False
            try:
                async with anyio.create_task_group() as tg:
                    async def leading() -> None:
                        nonlocal done
                        await lead()
                        done = True
                        tg.cancel_scope.cancel()

                    tg.start_soon(leading)
                    await self._renew_loop()
                    tg.cancel_scope.cancel()  # lost the lease: stop leading
            finally:
                self.is_leader = False
                if done or _cancelled_from_outside():
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        try:
                            await self.release()
                        except Exception as exc:  # best effort: the lease expires anyway
                            log.warning("leader election: release failed", extra={"error": str(exc)})
            if done:
                return
            log.warning("leader election: lost the lease, following", extra={
                "lease": f"{self.namespace}/{self.name}", "identity": self.identity})

    async def _renew_loop(self) -> None:
        """Returns when the Lease could not be renewed within ``renew_deadline``."""
        last_ok = time.monotonic()
        while True:
            await anyio.sleep(self.retry_period)
            if await self._attempt():
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok >= self.renew_deadline:
                return


def _cancelled_from_outside() -> bool:
    """True inside a scope being cancelled from outside (SIGTERM tearing the task down)."""
    try:
        return anyio.get_current_task() is not None and anyio.current_effective_deadline() == -float("inf")
    except RuntimeError:
        return False
