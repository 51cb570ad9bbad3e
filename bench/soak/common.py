"""The soak's fixed names and bounds, and the small waits every part uses."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from learner_api.seed import COURSES

JWT_SECRET = "soak-signing-key-with-enough-entropy-0123456789"
WEBHOOK_SECRET = "soak-webhook-secret-0123456789abcdef"
TENANTS = ("t-a", "t-b", "t-c")
NAMESPACES = ("soak-a", "soak-b", "soak-c")
LEASE_NS = "soak-system"
LEASE = "learner-platform-operator"
STREAM = "lp:progress"
LESSONS = [lesson[0] for course in COURSES for lesson in course[3]]
PRODUCT = "python-101-full"
#: RSS bounds (MiB) per kind of process: what the chart's limits leave room for, with a margin.
RSS_BOUND_MIB = {"operator": 300.0, "api": 300.0, "evaluator": 300.0, "redis": 200.0}
#: Writes after convergence that still belong to it (see Checks.finish), at most this far apart.
SETTLE_SECONDS = 3.0
CONVERGE_SECONDS = 60.0
#: How long a late child of a deleted platform may live before the garbage collector removes it.
ZOMBIE_GRACE_SECONDS = 10.0
#: Kinds the emulator does not serve (no KEDA): what the operator leaves out.
UNSERVED = ("ScaledObject", "TriggerAuthentication")
BIN = Path(sys.executable).parent


def now() -> float:
    return time.monotonic()


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = now() + within
    while not await check():
        if now() > deadline:
            raise SystemExit(f"error: not within {within:.0f} s: {what}")
        await asyncio.sleep(0.2)
