"""Test-only faults: a "bad build" of learner-api without building one (guarded rollouts are tested with it).

``TEST_FAULT_5XX_RATIO`` (0-1) answers that share of requests with 500, ``TEST_FAULT_LATENCY_MS`` delays every
request by that long. Both are refused unless ``NODE_ENV=development`` (settings.Settings), so a production pod
can never be made to fail by an environment variable. The request still runs (its route is matched and counted
under its template); only the status it reports is replaced, so the metrics look as a real failing build's do.
Probes (/livez, /readyz) are never faulted: a faulty pod stays in the Service, as a real bad build's would.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_PROBES = ("/livez", "/readyz")


class FaultMiddleware:
    def __init__(self, app: ASGIApp, error_ratio: float, latency_ms: int) -> None:
        self.app = app
        self.error_ratio = error_ratio
        self.latency = latency_ms / 1000
        self._owed = 0.0  # deterministic: every 1/ratio-th request fails, not a coin toss

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _PROBES:
            await self.app(scope, receive, send)
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        self._owed += self.error_ratio
        if self._owed < 1:
            await self.app(scope, receive, send)
            return
        self._owed -= 1

        async def failing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "status": 500}
            await send(message)

        await self.app(scope, receive, failing)
