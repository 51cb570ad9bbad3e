"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

kopf's peering pauses *every* operator when peers share a priority, so it cannot run two replicas
for availability. Instead every replica watches (warm caches, instant failover) and only the holder
of the Lease reconciles. Taking over an expired Lease is an update with the resourceVersion we read,
so two replicas can never both win it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Callable
from typing import Any

from learner_operator.kube.client import ApiError, KubeApi, NotLeading
from learner_operator.kube.paths import ResourceRef

logger = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _format(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclasses.dataclass
class LeaderElection:
    api: KubeApi
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    renew_seconds: float = 5.0
    on_change: Callable[[bool], None] = lambda leading: None
    #: After each renewal that leaves the Lease surely ours (writes refused meanwhile may go again).
    on_renew: Callable[[], None] = lambda: None
    leading: bool = False
    #: When (event loop time) the last successful renewal was sent.
    renewed_at: float = 0.0

    @property
    def ref(self) -> ResourceRef:
        return ResourceRef("coordination.k8s.io/v1", "leases", self.namespace, self.name)

    def _spec(self, acquired: str | None, transitions: int) -> dict[str, Any]:
        now = _format(_now())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        lease = await self.api.get(self.ref)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None, 0)}
            try:
                await self.api.create(self.ref, body)
            except ApiError as exc:
                if exc.status == 409:
                    return False  # someone else created it first
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = renewed is None or renewed + datetime.timedelta(seconds=duration) < _now()
        if holder != self.identity and holder and not expired:
            return False
        mine = holder == self.identity
        new_spec = self._spec(spec.get("acquireTime") if mine else None,
                              int(spec.get("leaseTransitions") or 0) + (0 if mine else 1))
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": new_spec}
        try:
            await self.api.merge_patch(self.ref, patch)
        except ApiError as exc:
            if exc.status == 409:
                return False  # it changed since we read it: someone else renewed or took it
            raise
        return True

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            logger.info("%s the leader lease %s/%s as %s", "Acquired" if leading else "Lost",
                        self.namespace, self.name, self.identity)
            self.on_change(leading)

    def _deadline(self) -> float:
        """Until when (event loop time) the Lease is surely still ours: others see it expire only
        ``lease_seconds`` after our last renewal, and clocks and requests take some of that."""
        return self.renewed_at + self.lease_seconds - self.renew_seconds

    def fence(self) -> None:
        """Refuse a write unless the Lease is surely ours now. The event loop's clock keeps running while the
        process is frozen (SIGSTOP, a long GC or VM pause), so a leader that wakes after its Lease ran out
        sends nothing more, even before its next renewal says that another replica took over."""
        if not self.leading or asyncio.get_running_loop().time() > self._deadline():
            raise NotLeading(f"{self.identity} does not hold the lease {self.namespace}/{self.name} for sure")

    async def run(self) -> None:
        """Forever: try to take or keep the Lease; a failure to renew in time means losing it."""
        loop = asyncio.get_running_loop()
        while True:
            sent, renewed = loop.time(), False
            try:
                # bounded as client-go's RenewDeadline: a renewal that hangs must not keep us "leading" for long
                won = await asyncio.wait_for(self.try_acquire_or_renew(),
                                             max(self.renew_seconds, self.lease_seconds - self.renew_seconds))
            except Exception as exc:  # any failure (API, network, credentials) is a failed try
                logger.warning("Leader election request failed: %s", exc or type(exc).__name__)
                won = self.leading and loop.time() < self._deadline()
            else:
                if won:
                    self.renewed_at, renewed = sent, True
            self._set(won)
            if renewed and loop.time() < self._deadline():
                self.on_renew()
            # Paced from when the request was sent: a renewal that took seconds to answer (a busy machine or
            # API server) is followed by the next one at once, before the Lease is unsure.
            interval = self.renew_seconds if self.leading else self.renew_seconds / 2
            await asyncio.sleep(max(interval / 10, interval - (loop.time() - sent)))

    async def release(self) -> None:
        """On a clean shutdown, let another replica take over at once instead of after the lease expires."""
        if not self.leading:
            return
        self._set(False)
        lease = await self.api.get(self.ref)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                     "spec": {"holderIdentity": None, "renewTime": None}}
            try:
                await self.api.merge_patch(self.ref, patch)
            except ApiError as exc:
                logger.warning("Could not release the leader lease: %s", exc)
