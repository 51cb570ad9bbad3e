"""Startup refuses unsafe configuration; SIGTERM drains before the process exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from learner_api.settings import ConfigError, load_migration_settings, load_settings
from tests.api.conftest import REDIS_URL

SAFE = {"DATABASE_URL": "postgresql://app:pw@db.example:5432/learn?sslmode=require",
        "REDIS_URL": "rediss://:pw@cache.example:6380/0", "NODE_ENV": "production"}


@pytest.mark.parametrize(("env", "complaint"), [
    ({"DATABASE_URL": None}, "DATABASE_URL: required but not set"),
    ({"DATABASE_URL": "changeme"}, "DATABASE_URL is a placeholder"),
    ({"PAYMENT_WEBHOOK_SECRET": "secret"}, "PAYMENT_WEBHOOK_SECRET is a placeholder"),
    ({"DATABASE_URL": "postgresql://app:pw@db.example:5432/learn"}, "DATABASE_URL must use TLS"),
    ({"REDIS_URL": "redis://:pw@cache.example:6379/0"}, "REDIS_URL must use TLS"),
    ({"NODE_ENV": "prod"}, "NODE_ENV"),
    ({"TEST_FAULT_5XX_RATIO": "0.5"}, "TEST_FAULT_5XX_RATIO and TEST_FAULT_LATENCY_MS are for tests only"),
    ({"TEST_FAULT_LATENCY_MS": "900"}, "refused unless NODE_ENV=development"),
])
def test_unsafe_configuration_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None],
                                                 complaint: str) -> None:
    for key, value in {**SAFE, **env}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert complaint in str(refused.value)
    assert "pw@" not in str(refused.value)


def test_safe_configuration_and_development_leniency(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SAFE.items():
        monkeypatch.setenv(key, value)
    assert load_settings().node_env == "production"
    monkeypatch.setenv("NODE_ENV", "development")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/dev")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert load_settings().development


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command() -> str:
    return str(Path(sys.executable).parent / "learner-api")


async def test_refuses_to_start_with_a_clear_message() -> None:
    env = {**os.environ, **SAFE, "DATABASE_URL": "changeme"}
    process = await asyncio.create_subprocess_exec(_command(), "serve", env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert b"refusing to start: DATABASE_URL is a placeholder" in err
    assert b"Traceback" not in err


async def test_sigterm_stops_readiness_then_drains_and_exits(database_url: str) -> None:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "PORT": str(port), "METRICS_PORT": str(_free_port())}
    process = await asyncio.create_subprocess_exec(_command(), "serve", "--host", "127.0.0.1", "--drain-seconds",
                                                   "1.5", env=env, stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:
            for _ in range(100):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("learner-api did not become ready")
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            draining = await client.get("/readyz")
            assert draining.status_code == 503
            assert "draining" in draining.json()["detail"]
            assert (await client.get("/livez")).status_code == 200  # still serving while the Service forgets it
        _, err = await asyncio.wait_for(process.communicate(), timeout=20)
        # uvicorn finishes its shutdown, then re-raises SIGTERM so that the exit says why it stopped.
        assert process.returncode in (0, -signal.SIGTERM), err.decode()[-2000:]
        assert b"Application shutdown complete" in err
    finally:
        if process.returncode is None:
            process.kill()


def test_the_evaluator_refuses_a_bad_rule_file_before_connecting(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - alert: Lag\n    signal: ingest_lag\n    above: 1\n")
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1",
           "NODE_ENV": "development", "ALERT_RULES_FILE": str(rules)}
    result = subprocess.run([sys.executable, "-m", "learner_api.cli", "evaluator"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert f"{rules}:2: rule Lag: signal: unknown signal 'ingest_lag'" in result.stderr


async def test_openapi_documents_every_learner_route(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/courses", "/v1/courses/{course_id}", "/v1/lessons/{lesson_id}", "/v1/progress", "/v1/enrollments",
            "/v1/products", "/v1/checkout", "/v1/entitlements", "/v1/webhooks/payments"} <= set(paths)
    assert "409" in paths["/v1/checkout"]["post"]["responses"]


def _environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]) -> None:
    for key in ("DATABASE_URL", "REDIS_URL", "DATABASE_MIGRATION_URL", "JWT_SECRET", "JWT_PUBLIC_KEY",
                "PAYMENT_WEBHOOK_SECRET", "ALERTMANAGER_URL", "NODE_ENV", "ALLOW_INSECURE_CONNECTIONS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)


def test_a_blank_optional_key_is_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """`.env.example` filled in with the optional keys left blank: empty values, never a placeholder error."""
    _environment(monkeypatch, {**SAFE, "JWT_SECRET": "a-real-signing-key-0123456789", "JWT_PUBLIC_KEY": "",
                               "PAYMENT_WEBHOOK_SECRET": "", "ALERTMANAGER_URL": "", "DATABASE_MIGRATION_URL": ""})
    settings = load_settings()
    assert (settings.jwt_public_key, settings.payment_webhook_secret, settings.alertmanager_url,
            settings.database_migration_url) == (None, None, None, None)
    monkeypatch.setenv("DATABASE_URL", "")
    with pytest.raises(ConfigError, match="DATABASE_URL: required but not set"):
        load_settings()


def test_migrate_needs_only_the_owners_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """The init container gets DATABASE_MIGRATION_URL (and DATABASE_URL as a fallback), no REDIS_URL or JWT."""
    owner = "postgresql://owner:pw@db.example:5432/learn?sslmode=require"
    _environment(monkeypatch, {"DATABASE_MIGRATION_URL": owner, "DATABASE_URL": SAFE["DATABASE_URL"]})
    assert load_migration_settings().url.get_secret_value() == owner
    _environment(monkeypatch, {"DATABASE_URL": SAFE["DATABASE_URL"], "DATABASE_MIGRATION_URL": ""})
    assert load_migration_settings().url.get_secret_value() == SAFE["DATABASE_URL"]
    _environment(monkeypatch, {})
    with pytest.raises(ConfigError, match=r"DATABASE_MIGRATION_URL .* or DATABASE_URL: required but not set"):
        load_migration_settings()
    _environment(monkeypatch, {"DATABASE_MIGRATION_URL": "postgresql://owner:pw@db.example/learn"})
    with pytest.raises(ConfigError, match="DATABASE_MIGRATION_URL must use TLS"):
        load_migration_settings()


@pytest.mark.parametrize(("env", "complaint"), [
    ({"DATABASE_URL": "db.example:5432/learn"}, "DATABASE_URL must start with postgresql:// or postgres://"),
    ({"DATABASE_URL": "postgresql://app:pw@db.example:99999/learn"}, "DATABASE_URL is not a valid URL"),
    ({"REDIS_URL": "cache.example:6379"}, "REDIS_URL must start with redis://"),
])
def test_a_url_the_client_cannot_use_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                         complaint: str) -> None:
    _environment(monkeypatch, {**SAFE, **env})
    with pytest.raises(ConfigError, match=re.escape(complaint)) as refused:
        load_settings()
    assert "pw@" not in str(refused.value)


async def test_the_api_docs_need_nothing_from_the_internet(client: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assert not re.search(r"https?://", html), f"{page} loads something from elsewhere"
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert assets
        for asset in assets:
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
            assert len(answer.content) > 1000, asset
    assert "url: '/openapi.json'" in (await client.get("/docs")).text


async def test_fault_switches_fail_a_share_of_requests_and_slow_them_down(database_url: str, stream: str) -> None:
    """A "bad build" for the guarded-rollout tests: the route still runs and is counted under its template,
    only its status is replaced; probes are never faulted."""
    from learner_api.app import create_app
    from tests.api.conftest import client_for, scrape, settings_for

    app = create_app(settings_for(database_url, progress_stream=stream, test_fault_5xx_ratio=0.25,
                                  test_fault_latency_ms=30))
    async for client in client_for(app):
        loop = asyncio.get_running_loop()
        started = loop.time()
        statuses = [(await client.get("/v1/courses")).status_code for _ in range(8)]
        assert loop.time() - started >= 8 * 0.03
        assert statuses.count(500) == 2
        assert statuses.count(401) == 6
        assert (await client.get("/livez")).status_code == 200
        assert 'http_requests_total{method="GET",route="/v1/courses",status="5xx"} 2.0' in scrape(client)
