"""How the evaluator starts while PostgreSQL or Redis is away: it waits, it does not exit.

An exit would be a crash loop in Kubernetes (CrashLoopBackOff holds the pod back for up to five
minutes after the dependency is back), so a server that is down, refusing connections or hung (a
SIGSTOPped Redis accepts the connection and never answers) is waited for with capped backoff and one
warning naming it, while /livez says "waiting" with 200: the process is doing the right thing, and a
restart would not help. What a person must fix (a wrong password, an unknown role or database, an ACL
that refuses the command, a missing migration) is a ConfigError: the one-line refusal, exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)

from learner_api.dependencies import REDIS_DOWN
from learner_api.settings import ConfigError
from learner_api.startup_checks import UNREACHABLE

logger = logging.getLogger("learner_api.evaluator")

T = TypeVar("T")

#: The longest pause between two attempts: work starts within this long of the dependency's return.
MAX_DELAY = 5.0
#: PostgreSQL is not there yet, or not ready: anything else it answers is a refusal to act on.
POSTGRES_AWAY = UNREACHABLE
#: Redis is not there yet, loading its data set, or a cluster without a master for some slots.
REDIS_AWAY = (*REDIS_DOWN, ClusterError, TryAgainError, RedisClusterException)
#: Redis answered and said no: the URL's credentials or the user's ACL.
REDIS_REFUSED = (AuthenticationError, AuthorizationError)


async def until_up(name: str, attempt: Callable[[], Awaitable[T]], away: tuple[type[BaseException], ...],
                   stop: asyncio.Event, waiting: set[str], on_wait: Callable[[], None]) -> T | None:
    """``attempt()``'s result once ``name`` answers; None if ``stop`` is set first. ``waiting`` holds
    ``name`` meanwhile (/livez shows it); ``on_wait()`` is called when a wait begins."""
    delay = 0.5
    while True:
        try:
            result = await attempt()
        except away as exc:
            if name not in waiting:
                logger.warning("%s is not reachable (%s: %s): waiting for it, trying again at most %.0fs apart",
                               name, type(exc).__name__, str(exc) or "no answer in time", MAX_DELAY)
                waiting.add(name)
                on_wait()
        else:
            if name in waiting:
                logger.info("%s answers: starting", name)
                waiting.discard(name)
            return result
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None
        delay = min(delay * 2, MAX_DELAY)


async def redis_setup(setups: list[Callable[[], Awaitable[None]]]) -> None:
    """The consumer groups made (the first commands sent), with a refusal turned into a ConfigError."""
    try:
        for setup in setups:
            await setup()
    except REDIS_REFUSED as exc:
        raise ConfigError(f"REDIS_URL: Redis refused the connection: {exc}; check the URL in the Secret") from None
    except ResponseError as exc:
        if isinstance(exc, REDIS_AWAY) or str(exc).startswith("LOADING"):
            raise
        raise ConfigError(f"REDIS_URL: Redis refused to make the consumer group: {exc}") from None
