"""Delays between retries of one failed request: endless, as client-go's reflectors retry.

kopf retries a request once per delay of ``settings.networking.error_backoffs`` and, when they run out,
raises; a watch that raises stops the whole operator (every replica at once, and the kubelet's
CrashLoopBackOff then keeps it away for up to 5 more minutes after the API server is back). An API
server away longer than any finite sequence (a control-plane upgrade, an etcd restore) would do that.
kopf calls ``iter()`` on the setting once per request and never ``len()`` unless it is ``Sized``, so
an iterable whose every iteration is endless makes each request retry until it succeeds.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class EndlessBackoffs:
    """``first`` then ``cap`` seconds forever, each capped delay shortened by up to ``jitter`` (a fraction)
    so that the watches and replicas that failed together do not all retry in the same instant.

    ``scale`` multiplies every delay: 1 in production, small in tests that must live through many cycles.
    Deliberately not ``Sized``: kopf would then count attempts ("#3/42") and a caller could take ``len()``.
    """

    first: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    cap: float = 8.0
    jitter: float = 0.25
    scale: float = 1.0

    def __iter__(self) -> Iterator[float]:
        capped = (self.cap * (1.0 - random.uniform(0.0, self.jitter)) for _ in itertools.repeat(None))  # noqa: S311
        return (delay * self.scale for delay in itertools.chain(self.first, capped))
