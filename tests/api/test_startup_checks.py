"""The services refuse to pretend: the install steps of docs/install.md, in their order, on a managed-style
PostgreSQL (an owner with CREATEROLE, no superuser), then what a pod does when a step was missed."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from learner_operator.builders import CONTAINER_SECRET_KEYS
from tests.api.conftest import ADMIN_URL, JWT_SECRET, REDIS_URL, admin_execute, bearer, with_database
from tests.conftest import ROOT
from tests.net import free_port

LEARNER_API = str(Path(sys.executable).parent / "learner-api")
#: What the operator's ConfigMap gives every container (the local servers have no TLS, hence the last one).
CONFIG_MAP = {"NODE_ENV": "production", "TENANT_MODE": "enabled", "LOG_FORMAT": "text",
              "ALLOW_INSECURE_CONNECTIONS": "true"}


def docs_role_sql() -> list[str]:
    """The statements of docs/install.md's role block, in their order."""
    text = (ROOT / "docs" / "install.md").read_text()
    block = re.search(r"### Database roles.*?```sql\n(.*?)```", text, re.S)
    assert block, "docs/install.md lost its database roles block"
    statements = re.sub(r"--[^\n]*", "", block.group(1)).split(";")
    return [" ".join(s.split()) for s in statements if s.strip()]


def env_file(values: dict[str, str]) -> dict[str, str]:
    """.env.example filled in as the docs say: the keys given here, every other one left blank."""
    keys = [line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
            if line and not line.startswith("#")]
    assert set(values) <= set(keys)
    return {key: values.get(key, "") for key in keys}


def container_env(container: str, secret: dict[str, str], **extra: str) -> dict[str, str]:
    """A container's environment as the operator wires it: the ConfigMap and only its own Secret keys
    (an empty key in the Secret arrives as an empty variable, as Kubernetes does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "JWT", "PAYMENT"))}
    return {**env, **CONFIG_MAP, **{k: secret[k] for k in CONTAINER_SECRET_KEYS[container] if k in secret},
            **extra}


@pytest.fixture
def managed_postgres() -> Iterator[tuple[str, str]]:
    """What a managed PostgreSQL 15+ gives: a database owned by a CREATEROLE role that is not a superuser.
    Yields (owner URL, login role name for the docs' learner_app_login)."""
    suffix = secrets.token_hex(4)
    owner, database, login = f"own_{suffix}", f"learner_managed_{suffix}", f"login_{suffix}"
    asyncio.run(admin_execute(f"CREATE ROLE {owner} LOGIN CREATEROLE"))
    asyncio.run(admin_execute(f'CREATE DATABASE "{database}" OWNER {owner}'))
    try:
        yield with_database(ADMIN_URL, database, user=owner), login
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        asyncio.run(admin_execute(f"DROP ROLE IF EXISTS {login}"))
        asyncio.run(admin_execute(f"DROP ROLE IF EXISTS {owner}"))


async def run_as(url: str, statements: list[str]) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            try:
                await connection.execute(statement)
            except asyncpg.DuplicateObjectError:
                # roles live per cluster and the tests share one: learner_app may exist already
                assert statement.startswith("CREATE ROLE learner_app ")
    finally:
        await connection.close()


def refused(container: str, env: dict[str, str], tmp_path: Path) -> str:
    """Run the container's command; it must exit 2 with one line, also left as the termination message."""
    command = {"learner-api": "serve", "evaluator": "evaluator", "migrate": "migrate"}[container]
    log = tmp_path / "termination-log"
    result = subprocess.run([LEARNER_API, command], env={**env, "TERMINATION_MESSAGE_PATH": str(log)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert log.read_text().strip() == result.stderr.strip()
    return result.stderr


def wait_http(url: str, process: subprocess.Popen[str]) -> None:
    """Until ``url`` answers 200; the process must not exit meanwhile (its stderr then says why)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in time")


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


def test_the_install_order_of_the_docs_works_on_a_managed_postgresql(
        managed_postgres: tuple[str, str], tmp_path: Path) -> None:
    owner_url, login = managed_postgres
    # step 1: the roles, as the owner, before anything runs
    sql = [s.replace("learner_app_login", login) for s in docs_role_sql()]
    assert [s.split()[0:3] for s in sql] == [["CREATE", "ROLE", "learner_app"], ["CREATE", "ROLE", login],
                                              ["GRANT", "learner_app", "TO"]]
    asyncio.run(run_as(owner_url, sql))
    # step 2: the Secret, from .env.example with the optional keys left blank
    login_url = owner_url.replace(owner_url.split("//")[1].split("@")[0], login, 1)
    secret = env_file({"DATABASE_URL": login_url, "REDIS_URL": REDIS_URL, "DATABASE_MIGRATION_URL": owner_url,
                       "JWT_SECRET": JWT_SECRET})
    assert secret["PAYMENT_WEBHOOK_SECRET"] == ""
    # step 3: the pods. The init container migrates with the owner (no superuser anywhere)...
    migrate = subprocess.run([LEARNER_API, "migrate"], env=container_env("migrate", secret), capture_output=True,
                             text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    assert "0003_evaluator" in migrate.stdout
    # ... then learner-api serves as the login role, and a learner gets content
    seeded = subprocess.run([LEARNER_API, "seed"], env=container_env("learner-api", secret), capture_output=True,
                            text=True, timeout=60)
    assert seeded.returncode == 0, seeded.stderr
    port = free_port()
    server = subprocess.Popen([LEARNER_API, "serve", "--host", "127.0.0.1", "--drain-seconds", "0"], text=True,
                              env=container_env("learner-api", secret, PORT=str(port), METRICS_PORT=str(free_port())),
                              stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", server)
        courses = httpx.get(f"http://127.0.0.1:{port}/v1/courses", headers=bearer("ada"), timeout=5)
        assert courses.status_code == 200, courses.text
        assert courses.json()["items"]
    finally:
        stop(server)
    # the evaluator starts with its own keys too (no JWT, no webhook secret)
    metrics = free_port()
    evaluator = subprocess.Popen([LEARNER_API, "evaluator"], stderr=subprocess.PIPE, text=True,
                                 env=container_env("evaluator", secret, METRICS_PORT=str(metrics)))
    try:
        wait_http(f"http://127.0.0.1:{metrics}/livez", evaluator)
    finally:
        stop(evaluator)

    # A step missed: the login role never granted learner_app (the order the docs used to give)
    asyncio.run(admin_execute(f"REVOKE learner_app FROM {login}", url=owner_url))
    message = refused("learner-api", container_env("learner-api", secret, PORT=str(free_port())), tmp_path)
    assert f"role '{login}' is not a member of learner_app" in message
    assert f"GRANT learner_app TO {login}" in message
    assert "postgresql://" not in message


def test_a_superuser_the_owner_or_no_jwt_key_is_refused_in_one_line(admin_database_url: str,
                                                                    database_url: str, tmp_path: Path) -> None:
    base = {"REDIS_URL": REDIS_URL, "JWT_SECRET": JWT_SECRET, "PORT": str(free_port())}
    as_superuser = refused("learner-api", container_env("learner-api", {**base, "DATABASE_URL": admin_database_url}),
                           tmp_path)
    assert "a superuser: row-level security (tenant isolation) would not apply" in as_superuser
    no_key = refused("learner-api", container_env("learner-api", {**base, "DATABASE_URL": database_url,
                                                                  "JWT_SECRET": ""}), tmp_path)
    assert "JWT_SECRET or JWT_PUBLIC_KEY is required with NODE_ENV=production" in no_key
    # the evaluator needs no JWT key, and checks its role as well
    evaluator = refused("evaluator", container_env("evaluator", {**base, "DATABASE_URL": admin_database_url,
                                                                 "METRICS_PORT": str(free_port())}), tmp_path)
    assert "superuser" in evaluator


def test_an_owner_and_an_unmigrated_database_are_refused(managed_postgres: tuple[str, str], tmp_path: Path) -> None:
    owner_url, _ = managed_postgres
    secret = {"DATABASE_URL": owner_url, "REDIS_URL": REDIS_URL, "JWT_SECRET": JWT_SECRET, "PORT": str(free_port())}
    assert "the database has no schema yet: run `learner-api migrate`" in refused(
        "learner-api", container_env("learner-api", secret), tmp_path)
    migrated = subprocess.run([LEARNER_API, "migrate"], env=container_env("migrate", secret), capture_output=True,
                              text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    message = refused("learner-api", container_env("learner-api", secret), tmp_path)
    assert "the owner of the tables" in message
    assert "DATABASE_MIGRATION_URL" in message


def test_a_database_behind_the_image_is_refused(database_url: str, admin_database_url: str, tmp_path: Path) -> None:
    asyncio.run(admin_execute("DELETE FROM schema_migrations WHERE version = '0004_retention'",
                              url=admin_database_url))
    try:
        secret = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "JWT_SECRET": JWT_SECRET,
                  "PORT": str(free_port())}
        message = refused("learner-api", container_env("learner-api", secret), tmp_path)
        assert "the database lacks migration 0004_retention" in message
    finally:
        from learner_api.migrate import bundled

        version = next(m for m in bundled() if m.version == "0004_retention")
        asyncio.run(admin_execute("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                                  version.version, version.checksum, url=admin_database_url))


# From a terminal SIGINT starts at its default; a shell script's background job (`scripts/test &`, some CI
# runners) starts with it ignored. The exit code must not depend on which.
@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["in-a-terminal", "as-a-background-job"])
def test_ctrl_c_stops_the_server_without_a_traceback(database_url: str, sigint: signal.Handlers) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "PORT": str(port), "METRICS_PORT": str(free_port())}
    process = subprocess.Popen([LEARNER_API, "serve", "--host", "127.0.0.1", "--drain-seconds", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert b"Application shutdown complete" in output
    assert b"Traceback" not in output
    assert b"KeyboardInterrupt" not in output
    assert process.returncode == 130
