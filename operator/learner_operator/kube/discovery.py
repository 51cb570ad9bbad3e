"""Which optional kinds the cluster serves, asked of the API server's discovery and cached briefly.

A kind without its CRD (a ServiceMonitor where the Prometheus Operator is not installed) answers
every write with a plain "404 page not found": retrying the write would never help. Discovery says
so up front; the answer is kept for ``ttl`` seconds, so installing the CRD later is noticed within
that time (and at once after :meth:`Discovery.forget`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from learner_operator.kube.client import KubeApi


class Discovery:
    def __init__(self, api: KubeApi, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._ttl = ttl
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[float, bool]] = {}

    async def served(self, api_version: str, plural: str) -> bool:
        cached = self._known.get((api_version, plural))
        if cached is not None and self._clock() - cached[0] < self._ttl:
            return cached[1]
        answer = await self._api.served(api_version, plural)
        self._known[(api_version, plural)] = (self._clock(), answer)
        return answer

    def forget(self) -> None:
        self._known.clear()
