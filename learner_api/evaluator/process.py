"""How the evaluator's process runs: its CPU per stored row is the throughput of one replica.

- uvloop where it is installed (uvicorn[standard] brings it, as for the API): the event loop's own
  work per read, write and acknowledgement costs less than with the standard loop.
- The garbage collector: every batch allocates a few containers per entry (the reply's lists, the
  decoded events), all freed by reference counting, none in a cycle. With the default thresholds they
  set off a young collection every 700 and a full one every 70,000 or so, and a full collection walks
  every object the process holds (clients, the metrics registry, the loaded modules). After start-up
  those long-lived objects are frozen (never scanned again) and young collections wait for 20,000
  allocations: cycles (an exception and its traceback, say) are still collected, a little later.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Young collections after this many allocations (the default is 700); the older generations as usual.
GEN0_THRESHOLD = 20_000


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover  # an install without uvicorn[standard]
        return None
    return uvloop.new_event_loop


def quiet_gc() -> None:
    """Call once start-up is done: what exists now lives as long as the process."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
