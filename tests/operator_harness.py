"""Run the real operator (kopf.operator, our handlers) in the test's event loop against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf

from learner_operator.handlers import OperatorConfig, Runtime, register
from tests.kube_emulator import Cluster

NS = "learning"


@dataclasses.dataclass
class Operator:
    memo: kopf.Memo
    task: asyncio.Task[None]

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.memo["runtime"]
        return runtime


@contextlib.asynccontextmanager
async def running_operator(cluster: Cluster, *, resync_seconds: float = 300.0) -> AsyncIterator[Operator]:
    url = str(cluster.url).rstrip("/")
    registry = kopf.OperatorRegistry()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    register(registry, OperatorConfig(api_host=url, metrics_port=None, resync_seconds=resync_seconds,
                                      workers=4), login=login)
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=registry, settings=settings, clusterwide=True, standalone=True, memo=memo,
        stop_flag=stop, ready_flag=ready,
    ))
    await asyncio.wait_for(ready.wait(), timeout=10)
    try:
        yield Operator(memo, task)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):  # kopf ends its root task by cancelling it
            await asyncio.wait_for(task, timeout=20)


async def eventually(check: Callable[[], Any], *, within: float = 10.0, what: str = "") -> Any:
    """Poll until ``check()`` returns something truthy; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.05)


async def settled(cluster: Cluster, operator: Operator, *, quiet: float = 0.5, within: float = 15.0) -> None:
    """Until the operator has been idle and the cluster unwritten-to for ``quiet`` seconds."""
    deadline = time.monotonic() + within
    count, since = len(cluster.log), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await operator.runtime.engine.wait_idle()
        if len(cluster.log) != count:
            count, since = len(cluster.log), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("the operator did not settle")
