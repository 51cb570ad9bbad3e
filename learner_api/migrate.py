"""Ordered, transactional SQL migrations, safe when several replicas start at once.

A small runner instead of Alembic: the service has no ORM and its schema is plain SQL files
(``learner_api/migrations/NNNN_name.sql``). Each file runs in its own transaction together with its
bookkeeping row, under a PostgreSQL advisory lock, so concurrent runners apply each file exactly once
and a failing file leaves nothing behind. An applied file that was edited afterwards is refused
(checksums), because the database would silently differ from the repository.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

#: pg_advisory_lock key: any constant, the same for every replica.
LOCK_KEY = 0x6C6561726E6572  # "learner"
#: Unique indexes of the catalogs every database of a server shares: roles and role memberships.
_SHARED_CATALOG_INDEXES = ("pg_authid_", "pg_auth_members_")
#: Runs of one file that lost a race on those catalogs before the error is reported.
_ATTEMPTS = 3


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled() -> list[Migration]:
    files = resources.files("learner_api") / "migrations"
    found = sorted((f for f in files.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f.name.removesuffix(".sql"), f.read_text()) for f in found]


@dataclass(frozen=True)
class Outcome:
    #: The versions this run applied (empty when the database was up to date).
    applied: list[str]
    #: The newest version the database records afterwards: its schema version. A database that a newer
    #: release migrated already (a rollback) reports that release's version, not this image's newest.
    schema_version: str


async def migrate(dsn: str, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; returns the versions applied by this call (empty when up to date)."""
    return (await upgrade(dsn, migrations)).applied


async def upgrade(dsn: str, migrations: list[Migration] | None = None) -> Outcome:
    """Apply what is missing, and say which schema version the database is at afterwards."""
    migrations = bundled() if migrations is None else migrations
    connection = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {r["version"]: r["checksum"] for r in await connection.fetch(
                "SELECT version, checksum FROM schema_migrations")}
            done: list[str] = []
            for migration in migrations:
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(f"migration {migration.version} was changed after it was applied; "
                                             "add a new migration instead of editing an applied one")
                    continue
                await _apply(connection, migration)
                done.append(migration.version)
            return Outcome(done, max([*applied, *done], default=""))
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await connection.close()


def _lost_a_race_on_roles(exc: asyncpg.PostgresError) -> bool:
    """Another database's migration created the same role or role membership at the same moment.

    Roles are server-wide, but the advisory lock above (like every advisory lock) is per database, so two
    databases of one server (two platforms sharing a managed PostgreSQL, or two tenants' databases) migrate
    at once: both see no ``learner_stats`` membership, both insert it, and the one that waited on the
    other's commit fails with a duplicate key on pg_auth_members (or pg_authid for a role)."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return (exc.constraint_name or "").startswith(_SHARED_CATALOG_INDEXES)
    return isinstance(exc, asyncpg.DuplicateObjectError) and str(exc).startswith("role ")


async def _apply(connection: asyncpg.Connection, migration: Migration) -> None:
    """One file and its bookkeeping row in one transaction. A file that lost a race on the server-wide role
    catalogs is run again: its transaction rolled back whole, and the winner has committed (the loser waited
    for that), so the next run finds the role or membership made and passes it by."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                                         migration.version, migration.checksum)
            return
        except asyncpg.PostgresError as exc:
            if attempt < _ATTEMPTS and _lost_a_race_on_roles(exc):
                continue
            raise MigrationError(f"migration {migration.version} failed: {exc}") from exc
