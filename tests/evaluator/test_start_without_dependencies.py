"""`learner-api evaluator` started while Redis or PostgreSQL is away waits for it (no exit, so no crash loop
in Kubernetes), answers /livez meanwhile, and stores progress once the dependency is back; what a person
must fix (a wrong password, a superuser role) still ends it with the one-line refusal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from tests.api.conftest import REDIS_URL, admin_execute
from tests.evaluator.conftest import _binary, entry, rows
from tests.net import behind, forwarding, free_port

T = TypeVar("T")
LEARNER_API = str(Path(sys.executable).parent / "learner-api")


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float = 45.0, what: str = "") -> T:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {within:.0f}s: {what}")
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def redis_server(port: int, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server on ``port``, answering when the block starts."""
    process = subprocess.Popen([_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port, socket_timeout=1).ping()
                break
            except redis.AuthenticationError:
                break  # it answers: with --requirepass, a PING without the password is refused
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGCONT)  # a frozen one must be able to stop
        process.terminate()
        process.wait(10)


class Evaluator:
    """`learner-api evaluator` as a pod runs it, with its log in a file."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "evaluator.log"
        self.env = {**os.environ, "NODE_ENV": "development", "POD_NAME": "evaluator-0",
                    "METRICS_PORT": str(self.port), "EVALUATOR_CLAIM_IDLE_SECONDS": "1", **env}
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Evaluator:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(LEARNER_API, "evaluator", env=self.env, stdout=log,
                                                                stderr=log)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def alive(self) -> None:
        assert self.process is not None
        assert self.process.returncode is None, f"exited with {self.process.returncode}: {self.log.read_text()[-3000:]}"

    async def livez(self) -> dict[str, Any] | None:
        """/livez's answer when it is 200; the process must be running."""
        self.alive()
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                response = await http.get(f"http://127.0.0.1:{self.port}/livez")
        except httpx.TransportError:
            return None
        return dict(response.json()) if response.status_code == 200 else None


async def _waiting_for(evaluator: Evaluator, name: str) -> dict[str, Any] | None:
    body = await evaluator.livez()
    return body if body and body["status"] == "waiting" and name in body["for"] else None


async def _stored(admin_database_url: str, tenant: str, evaluator: Evaluator) -> bool:
    evaluator.alive()
    return await rows(admin_database_url, tenant) == 1


async def test_started_before_redis_it_waits_then_stores_progress_once_redis_starts(
        database_url: str, admin_database_url: str, stream: str, tenant: str, tmp_path: Path) -> None:
    port = free_port()
    async with Evaluator(tmp_path, DATABASE_URL=database_url, REDIS_URL=f"redis://127.0.0.1:{port}/0",
                         PROGRESS_STREAM=stream) as evaluator:
        await eventually(lambda: _waiting_for(evaluator, "Redis"), what="/livez says it waits for Redis")
        warnings = [line for line in evaluator.log.read_text().splitlines() if "Redis is not reachable" in line]
        assert len(warnings) == 1, evaluator.log.read_text()
        assert "Traceback" not in evaluator.log.read_text()
        with redis_server(port):
            client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
            try:
                await client.xadd(stream, entry(tenant))  # type: ignore[arg-type]
                await eventually(lambda: _stored(admin_database_url, tenant, evaluator), what="the event stored")
            finally:
                await client.aclose()
            assert await evaluator.livez() == {"status": "ok"}


async def test_started_against_a_frozen_redis_it_waits_then_stores_progress_once_redis_thaws(
        database_url: str, admin_database_url: str, stream: str, tenant: str, tmp_path: Path) -> None:
    port = free_port()
    with redis_server(port) as server:
        client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            await client.xadd(stream, entry(tenant))  # type: ignore[arg-type]
            server.send_signal(signal.SIGSTOP)  # connections are accepted, nothing is answered
            async with Evaluator(tmp_path, DATABASE_URL=database_url, REDIS_URL=f"redis://127.0.0.1:{port}/0",
                                 PROGRESS_STREAM=stream) as evaluator:
                # "Redis" is listed once a command has timed out (10 s): the old start-up exited there
                await eventually(lambda: _waiting_for(evaluator, "Redis"), what="/livez says it waits for Redis")
                server.send_signal(signal.SIGCONT)
                await eventually(lambda: _stored(admin_database_url, tenant, evaluator), what="the event stored")
        finally:
            await client.aclose()


@pytest.mark.parametrize("hung", [False, True], ids=["refusing", "hung"])
async def test_started_without_postgresql_it_waits_then_stores_progress_once_postgresql_answers(
        database_url: str, admin_database_url: str, stream: str, tenant: str, redis_client: aioredis.Redis,
        hung: bool, tmp_path: Path) -> None:
    port = free_port()
    url, target = behind(database_url, port)
    async with contextlib.AsyncExitStack() as stack:
        if hung:  # connections accepted, never answered: asyncpg's connect times out (5 s)
            silent = await stack.enter_async_context(contextlib.AsyncExitStack())
            await silent.enter_async_context(forwarding(port, None))
        evaluator = await stack.enter_async_context(
            Evaluator(tmp_path, DATABASE_URL=url, REDIS_URL=REDIS_URL, PROGRESS_STREAM=stream))
        await eventually(lambda: _waiting_for(evaluator, "PostgreSQL"), what="/livez says it waits for PostgreSQL")
        await redis_client.xadd(stream, entry(tenant))  # type: ignore[arg-type]
        if hung:
            await silent.aclose()
        await stack.enter_async_context(forwarding(port, target))
        await eventually(lambda: _stored(admin_database_url, tenant, evaluator), what="the event stored")
        assert await evaluator.livez() == {"status": "ok"}


async def test_a_superuser_is_refused_once_postgresql_answers(admin_database_url: str, stream: str,
                                                              tmp_path: Path) -> None:
    """Waiting must not skip the checks: PostgreSQL down at start, then the role it is given is refused."""
    port = free_port()
    url, target = behind(admin_database_url, port)
    async with Evaluator(tmp_path, DATABASE_URL=url, REDIS_URL=REDIS_URL, PROGRESS_STREAM=stream,
                         NODE_ENV="production", TERMINATION_MESSAGE_PATH=str(tmp_path / "termination-log"),
                         ALLOW_INSECURE_CONNECTIONS="true") as evaluator:
        await eventually(lambda: _waiting_for(evaluator, "PostgreSQL"), what="/livez says it waits for PostgreSQL")
        async with forwarding(port, target):
            assert evaluator.process is not None
            assert await asyncio.wait_for(evaluator.process.wait(), 45) == 2
    last = evaluator.log.read_text().strip().splitlines()[-1]
    assert "learner-api evaluator: refusing to start:" in last
    assert "a superuser" in last
    assert (tmp_path / "termination-log").read_text().strip() == last


@pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
def test_a_redis_that_refuses_the_credentials_ends_it_in_one_line(database_url: str, stream: str,
                                                                  password: str | None, tmp_path: Path) -> None:
    port = free_port()
    with redis_server(port, "--requirepass", "right-password"):
        credentials = f":{password}@" if password else ""
        result = subprocess.run(
            [LEARNER_API, "evaluator"], capture_output=True, text=True, timeout=60,
            env={**os.environ, "NODE_ENV": "development", "DATABASE_URL": database_url, "PROGRESS_STREAM": stream,
                 "REDIS_URL": f"redis://{credentials}127.0.0.1:{port}/0", "METRICS_PORT": str(free_port())})
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("learner-api evaluator: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert password is None or password not in last


async def test_started_while_postgresql_has_no_connection_slot_left_it_waits_then_stores_progress(
        admin_database_url: str, database_url: str, stream: str, tenant: str, redis_client: aioredis.Redis,
        tmp_path: Path) -> None:
    """A full server ("too many connections", 53300: max_connections or the role's limit reached) is one to wait
    for, not a refusal: it used to end the evaluator with "PostgreSQL refused the connection ... check the URL
    in the Secret", a crash loop while the database was merely busy."""
    role = f"lp_full_{tenant.replace('-', '_')}"[:63]
    await admin_execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0 IN ROLE learner_app", url=admin_database_url)
    try:
        url = database_url.replace(f"//{database_url.split('//')[1].split('@')[0]}@", f"//{role}@", 1)
        async with Evaluator(tmp_path, DATABASE_URL=url, REDIS_URL=REDIS_URL, PROGRESS_STREAM=stream) as evaluator:
            await eventually(lambda: _waiting_for(evaluator, "PostgreSQL"), what="/livez says it waits for PostgreSQL")
            assert "TooManyConnectionsError" in evaluator.log.read_text(), evaluator.log.read_text()[-3000:]
            await redis_client.xadd(stream, entry(tenant))  # type: ignore[arg-type]
            await admin_execute(f"ALTER ROLE {role} CONNECTION LIMIT -1", url=admin_database_url)
            await eventually(lambda: _stored(admin_database_url, tenant, evaluator), what="the event stored")
    finally:
        await admin_execute(f"DROP ROLE IF EXISTS {role}", url=admin_database_url)
