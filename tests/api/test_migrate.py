"""Migrations against the real PostgreSQL: ordered, once, atomic, concurrent-safe, tamper-evident."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from learner_api.migrate import Migration, MigrationError, bundled, migrate
from tests.api.conftest import ADMIN_URL, throwaway_database


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    async with throwaway_database("learner_migrate") as url:
        yield url


async def fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


async def test_bundled_migrations_apply_once(empty_database: str) -> None:
    versions = [m.version for m in bundled()]
    assert versions == sorted(versions)
    assert await migrate(empty_database) == versions
    assert await migrate(empty_database) == []
    assert [r["id"] for r in await fetch(empty_database, "SELECT id FROM tenants")] == ["default"]


async def test_replicas_starting_together_apply_each_migration_exactly_once(empty_database: str) -> None:
    slow = Migration("9999_slow", "SELECT pg_sleep(0.3); CREATE TABLE counted (n int); INSERT INTO counted VALUES (1);")
    results = await asyncio.gather(*(migrate(empty_database, [*bundled(), slow]) for _ in range(5)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, len(bundled()) + 1]
    assert [r["n"] for r in await fetch(empty_database, "SELECT n FROM counted")] == [1]


async def test_a_failing_migration_leaves_nothing_behind(empty_database: str) -> None:
    broken = Migration("9999_broken", "CREATE TABLE half_done (n int); SELECT * FROM no_such_table;")
    with pytest.raises(MigrationError, match="9999_broken failed"):
        await migrate(empty_database, [*bundled(), broken])
    assert [r["t"] for r in await fetch(empty_database, "SELECT to_regclass('half_done') AS t")] == [None]
    versions = [r["version"] for r in await fetch(empty_database, "SELECT version FROM schema_migrations")]
    assert versions == [m.version for m in bundled()]  # the good ones stay applied


async def test_an_edited_applied_migration_is_refused(empty_database: str) -> None:
    await migrate(empty_database)
    first = bundled()[0]
    edited = Migration(first.version, first.sql + "\n-- edited\n")
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        await migrate(empty_database, [edited])


@pytest.fixture
async def owned_database() -> AsyncIterator[str]:
    """A database owned by a CREATEROLE role that is not a superuser: managed PostgreSQL 15+'s admin user.
    Exactly: CREATE ROLE own LOGIN CREATEROLE; CREATE DATABASE d OWNER own; the URL connects as own."""
    suffix = secrets.token_hex(4)
    owner, name = f"own_{suffix}", f"learner_owned_{suffix}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE")
    await admin.execute(f'CREATE DATABASE "{name}" OWNER {owner}')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0].replace("://postgres@", f"://{owner}@") + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.close()


async def lent_create(dsn: str) -> bool:
    """Does learner_stats still hold CREATE on the schema (lent by 0002a for 0003/0004)?"""
    rows = await fetch(dsn, "SELECT has_schema_privilege('learner_stats', current_schema(), 'CREATE') AS c")
    return bool(rows[0]["c"])


async def test_a_createrole_owner_that_is_no_superuser_migrates(owned_database: str) -> None:
    assert (await fetch(owned_database, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))[0][
        "rolsuper"] is False
    assert await migrate(owned_database) == [m.version for m in bundled()]
    owners = {r["proname"]: r["owner"] for r in await fetch(
        owned_database, "SELECT proname, pg_get_userbyid(proowner) AS owner FROM pg_proc "
                        "WHERE proname IN ('platform_tenant_stats', 'prune_bookkeeping')")}
    assert owners == {"platform_tenant_stats": "learner_stats", "prune_bookkeeping": "learner_stats"}
    assert not await lent_create(owned_database)  # 0007 took the lent privilege back


async def test_a_database_migrated_before_the_fix_takes_the_new_migrations(empty_database: str) -> None:
    """Released migrations were not edited: a database that applied them (as a superuser) is accepted as it
    is and only gets the new files, 0002a (out of order, harmless there) and 0007."""
    released = [m for m in bundled() if m.version in ("0001_tenants", "0002_learning", "0003_evaluator",
                                                      "0004_retention")]
    await migrate(empty_database, released)
    assert await migrate(empty_database) == ["0002a_stats_role", *[m.version for m in bundled()
                                                                   if m.version > "0004_retention"]]
    assert not await lent_create(empty_database)
