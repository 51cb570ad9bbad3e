"""Memory the operator gives back: what a burst of creations leaves behind, and what start-up makes for good.

A burst (a hundred platforms created at once) parses and builds many short-lived dicts; CPython frees
them, but glibc's malloc keeps the freed pages for later, so the pod's RSS stays at its peak: memory
its limit must hold for nothing. After a burst, once the work queue is idle, ``malloc_trim`` hands the
free pages back (a few milliseconds). The image also sets ``MALLOC_ARENA_MAX=2`` (Dockerfile.operator):
threads (DNS lookups, kopf's executor) would otherwise each get an arena of their own to keep pages in.

What start-up made (kopf, the client, the modules) lives as long as the process: ``gc.freeze`` moves it
out of the collector's way, so that collections during a burst scan only the burst's objects.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim  # glibc only (not musl)
    except (OSError, AttributeError, TypeError):
        return None
    return trim


_TRIM = _malloc_trim()


def freeze() -> None:
    """Collect, then exempt everything alive now from future collections (it lives as long as the process)."""
    gc.collect()
    gc.freeze()


def trim() -> bool:
    """Give free heap pages back to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def trim_after_bursts(progress: Callable[[], int], idle: Callable[[], bool], period: float = 5.0) -> None:
    """Every ``period`` seconds: if work was done since the last look (or this is the first look, after
    the start-up's listings) and none is left, trim."""
    done = -1
    while True:
        await asyncio.sleep(period)
        now = progress()
        if now != done and idle():
            done = now
            trim()
