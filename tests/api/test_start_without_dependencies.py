"""`learner-api serve` started while PostgreSQL and Redis hang (connections accepted, never answered) serves
/livez and a /readyz that names both, and becomes ready once they answer: no exit, so no crash loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from tests.api.conftest import JWT_SECRET, REDIS_URL
from tests.net import behind, forwarding, free_port_pair

LEARNER_API = str(Path(sys.executable).parent / "learner-api")


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def _answer(url: str, process: asyncio.subprocess.Process, log: Path) -> tuple[int, dict[str, object]] | None:
    assert process.returncode is None, f"exited with {process.returncode}: {_tail(log)}"
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(url)
    except httpx.TransportError:
        return None
    return response.status_code, response.json()


async def _until(url: str, status: int, process: asyncio.subprocess.Process, log: Path,
                 within: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + within
    while (answer := await _answer(url, process, log)) is None or answer[0] != status:
        assert time.monotonic() < deadline, f"{url} still {answer} after {within:.0f}s: {_tail(log)}"
        await asyncio.sleep(0.1)
    return answer[1]


async def test_serve_started_against_a_hung_postgresql_and_redis_waits_then_becomes_ready(
        database_url: str, tmp_path: Path) -> None:
    pg_port, redis_port, port = free_port_pair(), free_port_pair(), free_port_pair()
    pg_url, pg_target = behind(database_url, pg_port)
    redis_url, redis_target = behind(REDIS_URL, redis_port)
    log = tmp_path / "serve.log"
    env = {**os.environ, "NODE_ENV": "development", "JWT_SECRET": JWT_SECRET, "DATABASE_URL": pg_url,
           "REDIS_URL": redis_url, "PORT": str(port), "METRICS_PORT": str(port + 1)}
    async with contextlib.AsyncExitStack() as stack:
        hung = await stack.enter_async_context(contextlib.AsyncExitStack())
        await hung.enter_async_context(forwarding(pg_port, None))
        await hung.enter_async_context(forwarding(redis_port, None))
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(LEARNER_API, "serve", "--host", "127.0.0.1", env=env,
                                                           stdout=out, stderr=out)
        try:
            base = f"http://127.0.0.1:{port}"
            # PostgreSQL's checks give up after three 5 s timeouts: within the startupProbe's 60 s
            assert await _until(f"{base}/livez", 200, process, log) == {"status": "ok"}
            body = await _until(f"{base}/readyz", 503, process, log)
            assert body["unavailable"] == ["postgresql", "redis"]
            await hung.aclose()
            await stack.enter_async_context(forwarding(pg_port, pg_target))
            await stack.enter_async_context(forwarding(redis_port, redis_target))
            assert await _until(f"{base}/readyz", 200, process, log) == {"status": "ready"}
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
    assert "Traceback" not in log.read_text()

