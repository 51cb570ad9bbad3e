"""A coalescing work queue: many triggers for one platform become one reconcile at a time.

Like client-go's workqueue: a key is either waiting, being worked on, or neither; a trigger that
arrives while its key is being worked on marks it dirty and the key runs once more afterwards.
Failures come back after an exponential backoff; a periodic resync touches every known key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from learner_operator.timing import Later

K = TypeVar("K", bound=Hashable)
Work = Callable[[K], Awaitable[float | None]]  # returns seconds until a retry (a Later: a planned look), or None
#: What work returns for "look again now": 0 seconds, and not a failure (no backoff).
AGAIN = 0.0

logger = logging.getLogger(__name__)


class Engine(Generic[K]):
    def __init__(self, work: Work[K], *, workers: int = 8, max_backoff: float = 300.0) -> None:
        self._work = work
        self._workers = workers
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._waiting: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._failures: dict[K, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = asyncio.Event()
        self._running.set()
        #: Keys worked on so far (for what runs after a burst of work: see learner_operator.memory).
        self.completed = 0

    def pause(self) -> None:
        """Stop taking keys (the reconcile in flight finishes); triggers keep queueing."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def trigger(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._idle.clear()
            self._queue.put_nowait(key)

    def trigger_later(self, key: K, delay: float) -> None:
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.trigger(key)

    def retry_failed_now(self) -> None:
        """Every key backing off after a failure runs now (the API server is back after an outage: its
        retry may be minutes away). Its failure count stays, so a key that fails again backs off further."""
        for key in list(self._failures):
            if (timer := self._timers.get(key)) is not None:
                timer.cancel()
                self._fire(key)

    def forget(self, key: K) -> None:
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        self._failures.pop(key, None)

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Until nothing is waiting or being worked on (for tests and benchmarks)."""
        await self._idle.wait()

    async def _worker(self) -> None:
        while True:
            await self._running.wait()
            key = await self._queue.get()
            if not self._running.is_set():  # paused while we waited: put it back for the next leader
                self._queue.put_nowait(key)
                await self._running.wait()
                continue
            self._waiting.discard(key)
            self._active.add(key)
            retry: float | None
            try:
                retry = await self._work(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reconcile of %s failed", key)
                retry = 1.0
            finally:
                self._active.discard(key)
                self.completed += 1
            again = retry == AGAIN
            if isinstance(retry, Later):  # planned, not failed: no backoff; a trigger meanwhile runs now
                self._failures.pop(key, None)
                if key not in self._dirty:
                    self.trigger_later(key, float(retry))
                retry = None
            elif retry is None or again:
                self._failures.pop(key, None)
                retry = None
            else:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                retry = min(self._max_backoff, retry * 2.0 ** (failures - 1))
            if retry is not None:  # a failure backs off, whatever asked for the key meanwhile
                self._dirty.discard(key)
                self.trigger_later(key, retry)
            elif key in self._dirty or again:
                self._dirty.discard(key)
                self.trigger(key)
            if not self._waiting and not self._active:
                self._idle.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
