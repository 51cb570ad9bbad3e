"""A PostgreSQL or Redis that freezes (connections open, no answers: a stopped VM, a black-holed route) must not
hold learners: the app runs in a real uvicorn server on loopback, its database behind a TCP proxy that
the test freezes, and every request is answered 503 within its deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest

from learner_api import http_server
from learner_api.app import create_app
from tests.api.conftest import REDIS_URL, bearer, client_for, settings_for
from tests.net import free_port


class FreezableProxy:
    """Forwards TCP to a real server until frozen; frozen, it keeps every connection open and passes
    nothing on (new connections are accepted too, as a stopped server's kernel would)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self.thawed.wait()
                sink.write(data)
                await sink.drain()
        sink.close()

    async def close(self) -> None:
        self.thawed.set()
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def served(database_url: str, **settings: object) -> AsyncIterator[tuple[httpx.AsyncClient, FreezableProxy]]:
    target = urlsplit(database_url)
    proxy = FreezableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxied = database_url.replace(f":{target.port}/", f":{await proxy.start()}/")
    config = http_server.config(create_app(settings_for(proxied, **settings)), settings_for(proxied, **settings),
                                "127.0.0.1")
    config.port = free_port()
    server = http_server.MetricsServer(config)  # a uvicorn.Server that leaves pytest's signal handlers alone
    task = asyncio.create_task(server.serve())
    for _ in range(200):  # uvicorn says "started" with a flag, not an event
        if server.started:
            break
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=30) as client:
            yield client, proxy
    finally:
        proxy.thawed.set()  # first: the server's shutdown waits for its connections to finish
        server.should_exit = True
        await task
        await proxy.close()


async def frozen_request(client: httpx.AsyncClient, proxy: FreezableProxy, tenant: str,
                         deadline: float) -> None:
    headers = bearer("ada", tenant)
    assert (await client.get("/v1/products", headers=headers)).status_code == 200  # a pooled connection
    proxy.thawed.clear()
    start = time.monotonic()
    responses = await asyncio.gather(
        client.post("/v1/checkout", json={"product_id": "python-101-full"},
                    headers={**headers, "Idempotency-Key": "frozen"}),
        client.get("/v1/enrollments", headers=headers),
        client.get("/v1/lessons/sql-basics-join", headers=headers))  # not cached yet
    elapsed = time.monotonic() - start
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" in response.headers
    assert elapsed < deadline + 0.5, f"answered after {elapsed:.1f}s"


@pytest.mark.parametrize(("deadline", "statement_timeout"), [
    (1.5, 5.0),  # the request deadline ends it
    (4.0, 0.5),  # the statement timeout (and the bounded release) end it first
])
async def test_a_frozen_postgres_is_a_503_within_the_deadline(database_url: str, tenant: str, deadline: float,
                                                              statement_timeout: float) -> None:
    async with served(database_url, request_deadline_seconds=deadline,
                      database_statement_timeout_seconds=statement_timeout) as (client, proxy):
        await frozen_request(client, proxy, tenant, deadline)
        proxy.thawed.set()
        await asyncio.sleep(0.2)
        assert (await client.get("/livez")).status_code == 200


async def test_a_frozen_redis_refuses_progress_within_its_timeout(database_url: str, tenant: str,
                                                                  stream: str) -> None:
    target = urlsplit(REDIS_URL)
    proxy = FreezableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    proxied = f"redis://127.0.0.1:{await proxy.start()}/0"
    app = create_app(settings_for(database_url, redis_url=proxied, progress_stream=stream, redis_timeout_seconds=1))
    try:
        async for client in client_for(app):
            headers = bearer("ada", tenant)
            body = {"events": [{"id": str(uuid.uuid4()), "verb": "lesson_viewed", "lesson_id": "python-101-hello",
                                "occurred_at": datetime.now(UTC).isoformat()}]}
            assert (await client.post("/v1/progress", json=body, headers=headers)).status_code == 202
            assert (await client.get("/v1/lessons/python-101-hello", headers=headers)).status_code == 200
            proxy.thawed.clear()
            start = time.monotonic()
            refused = await client.post("/v1/progress", json=body, headers=headers)
            assert (refused.status_code, refused.json()["unavailable"]) == (503, ["redis"])
            assert time.monotonic() - start < 2
            cached = await client.get("/v1/lessons/python-101-hello", headers=headers)  # served from memory
            assert cached.status_code == 200
            proxy.thawed.set()
    finally:
        await proxy.close()
