"""Per-learner and per-tenant limits on costly requests (writes, reads that reach PostgreSQL), counted in
Redis across replicas without a Redis round trip on the request's path.

Fixed windows (``window`` seconds). Each replica counts locally and adds its counts to Redis every
``flush_interval`` seconds, one INCRBY and one EXPIRE per key touched since the last flush (each command
one key, pipelined), and learns the platform-wide totals from the replies. A request is refused when
the total last seen plus this replica's unflushed count reaches the limit. So one replica never lets a
learner past the limit, and N replicas can let through at most what each admits before the next flush.

Keys are bounded: one per active learner and one per tenant per window (the learner id is hashed, so a
key is short whatever the id), each expiring two windows later. With Redis down the limits still hold
per replica (local counts), and nothing waits for Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import defaultdict
from typing import Annotated

from fastapi import Depends, Request

from learner_api.auth import Identity, IdentityDep
from learner_api.dependencies import REDIS_DOWN, RedisGuard
from learner_api.problems import Problem
from learner_api.redis_keys import tenant_key

logger = logging.getLogger(__name__)


class RateLimiter:
    def __init__(self, redis: RedisGuard, *, per_learner: int, per_tenant: int, window: float = 10.0,
                 flush_interval: float = 0.1) -> None:
        self.redis, self.per_learner, self.per_tenant = redis, per_learner, per_tenant
        self.window, self.flush_interval = window, flush_interval
        self._totals: dict[str, int] = {}  # platform-wide counts as Redis last told us
        self._pending: defaultdict[str, int] = defaultdict(int)  # counted here, not yet in Redis
        self._window_of: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._keys: dict[Identity, tuple[str, str]] = {}  # this window's keys (hashing per request costs)
        self._keys_window = -1

    def keys(self, identity: Identity, window: int) -> tuple[str, str]:
        if window != self._keys_window:
            self._keys, self._keys_window = {}, window
        known = self._keys.get(identity)
        if known is None:
            learner = hashlib.sha256(identity.learner.encode()).hexdigest()[:20]
            known = self._keys[identity] = (tenant_key(identity.tenant, f"rl:{window}:l:{learner}"),
                                            tenant_key(identity.tenant, f"rl:{window}:all"))
        return known

    def check(self, identity: Identity) -> None:
        """Count one costly request, or refuse it with 429 (it is then not counted)."""
        now = time.time()
        window = int(now // self.window)
        learner_key, whole_tenant = self.keys(identity, window)
        for key, limit, whose in ((learner_key, self.per_learner, "this learner"),
                                  (whole_tenant, self.per_tenant, "this tenant")):
            if self._totals.get(key, 0) + self._pending.get(key, 0) >= limit:
                retry = max(1, math.ceil((window + 1) * self.window - now))
                raise Problem(429, f"too many requests for {whose}: at most {limit} per {self.window:g}s; "
                                   f"retry in {retry}s", headers={"Retry-After": str(retry)})
        for key in (learner_key, whole_tenant):
            self._pending[key] += 1
            self._window_of[key] = window
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(self.flush_interval)
            await self.flush()
        finally:
            self._flusher = None

    async def flush(self) -> None:
        """Add the local counts to Redis and learn the totals (also called at shutdown)."""
        pending, self._pending = self._pending, defaultdict(int)
        self._forget_old_windows()
        if not pending or not self.redis.available:
            self._merge_locally(pending)
            return
        ttl = math.ceil(self.window * 2)
        try:
            async with self.redis.client.pipeline(transaction=False) as pipe:
                for key, count in pending.items():
                    pipe.incrby(key, count)
                    pipe.expire(key, ttl)
                replies = await pipe.execute()
        except REDIS_DOWN:
            self.redis.failed()
            self._merge_locally(pending)
            return
        for key, total in zip(pending, replies[::2], strict=True):
            if key in self._window_of:  # not a window that ended meanwhile
                self._totals[key] = int(total)

    def _merge_locally(self, pending: dict[str, int]) -> None:
        """Redis unreachable: the counts stay this replica's own (the limit still holds per replica)."""
        for key, count in pending.items():
            if key in self._window_of:
                self._totals[key] = self._totals.get(key, 0) + count

    def _forget_old_windows(self) -> None:
        current = int(time.time() // self.window)
        for key in [key for key, window in self._window_of.items() if window < current]:
            self._window_of.pop(key, None)
            self._totals.pop(key, None)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()


async def costly_identity(request: Request, identity: IdentityDep) -> Identity:
    """The caller, counted against the rate limit: for routes that read PostgreSQL on every request.
    (Routes with a body were counted by the edge, before their body was read.)"""
    request.app.state.rate_limiter.check(identity)
    return identity


CostlyIdentityDep = Annotated[Identity, Depends(costly_identity)]
