"""What a service checks before it serves, so that a pod that cannot do its job never reports Ready.

Without these, a missing JWT key or a login role that was never granted learner_app gave pods that
answered /readyz with 200 and every learner request with 503 or 500. Each failed check is a
ConfigError whose message is one line naming the problem and the fix (the CLI prints it and writes it
where Kubernetes shows it as the termination message).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import asyncpg

from learner_api.dependencies import POSTGRES_DOWN
from learner_api.migrate import bundled
from learner_api.settings import ConfigError, Settings

logger = logging.getLogger("learner_api")

APP_ROLE = "learner_app"
ROLE_FIX = f"GRANT {APP_ROLE} TO {{role}} (docs/install.md, step 1)"
MIGRATE_FIX = ("run `learner-api migrate` with the tables' owner (the operator's migration Job does: `kubectl get lp` "
               "shows its progress)")
#: What the tables' tenants are given in 0002_learning; the services' role must have all of it.
_READ_WRITE = ("SELECT", "INSERT", "UPDATE")
_APP_TABLES = ("tenants", "courses", "lessons", "products", "enrollments", "progress_events", "lesson_progress",
               "orders", "idempotency_keys", "payment_events", "entitlements")


@dataclasses.dataclass(frozen=True)
class Needs:
    """The privileges a command must have: per table or view, and EXECUTE per function."""

    tables: dict[str, tuple[str, ...]]
    functions: tuple[str, ...] = ()


SERVE = Needs(tables={**dict.fromkeys(_APP_TABLES, _READ_WRITE),
                      "idempotency_keys": (*_READ_WRITE, "DELETE"), "course_progress": ("SELECT",)})
EVALUATOR = Needs(tables={"tenants": ("SELECT",), "progress_events": ("SELECT", "INSERT"),
                          "lesson_progress": _READ_WRITE},
                  functions=("platform_tenant_stats()", "prune_bookkeeping(interval, interval)"))


def require_jwt_key(settings: Settings) -> None:
    """Every learner route needs a verified token: outside development, no key means no service."""
    if settings.development or settings.jwt_secret or settings.jwt_public_key:
        return
    raise ConfigError(f"JWT_SECRET or JWT_PUBLIC_KEY is required with NODE_ENV={settings.node_env}: without one "
                      "every route answers 503; add one to the Secret (docs/install.md, step 2)")


#: PostgreSQL not there, not ready, full (no connection slot left: 53300) or gone mid-way: not the user's to fix.
UNREACHABLE = (*POSTGRES_DOWN, asyncpg.TooManyConnectionsError)


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection; a refusal (password, unknown role or database) is a ConfigError, while an
    unreachable or full server raises what asyncpg raised (one of UNREACHABLE). Its statements are bounded
    too: a server that freezes after the connect is not waited for forever."""
    try:
        connection: asyncpg.Connection = await asyncpg.connect(
            settings.database_url.get_secret_value(), timeout=5, command_timeout=10,
            statement_cache_size=settings.database_statement_cache_size)
    except UNREACHABLE:
        raise
    except asyncpg.PostgresError as exc:
        raise ConfigError(f"DATABASE_URL: PostgreSQL refused the connection: {exc}; check the URL in the "
                          "Secret") from None
    return connection


async def _connect(settings: Settings, attempts: int) -> asyncpg.Connection | None:
    """One connection, retried while the server is unreachable (a managed database may be waking up);
    None when it stays unreachable. A refusal is final."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await connect(settings)
        except UNREACHABLE:
            if attempt == attempts:
                return None
            await asyncio.sleep(delay)
            delay *= 2
    return None


async def check_database(settings: Settings, needs: Needs, *, attempts: int = 3) -> None:
    """Refuse (ConfigError) a role that bypasses row-level security, owns the tables, lacks learner_app's
    privileges, or a database not at the migration version this code expects. Outside development only
    for the first two: on a developer's machine they are warnings. Unreachable: a warning, and /readyz
    reports it."""
    connection = await _connect(settings, attempts)
    if connection is None:
        logger.warning("PostgreSQL not reachable at start: the role and schema checks are skipped (/readyz "
                       "reports the database until it answers)")
        return
    try:
        await check(settings, connection, needs)
    finally:
        await connection.close()


async def check(settings: Settings, connection: asyncpg.Connection, needs: Needs) -> None:
    """The checks of ``check_database`` on a connection the caller made (and closes)."""
    for problem in await _role_problems(connection):
        if not settings.development:
            raise ConfigError(problem)
        logger.warning("%s (allowed with NODE_ENV=development)", problem)
    await _check_schema(connection, needs)


async def _role_problems(connection: asyncpg.Connection) -> list[str]:
    role = await connection.fetchrow(
        "SELECT current_user AS name, rolsuper, rolbypassrls, "
        " EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
        "         AND c.relname = ANY($1::text[]) AND pg_has_role(current_user, c.relowner, 'MEMBER')) AS owner "
        "FROM pg_roles WHERE rolname = current_user", list(_APP_TABLES))
    name = role["name"]
    fix = "connect as a login role that is only a member of learner_app (docs/install.md, step 1)"
    if role["rolsuper"]:
        return [f"DATABASE_URL connects as '{name}', a superuser: row-level security (tenant isolation) would "
                f"not apply; {fix}"]
    if role["rolbypassrls"]:
        return [f"DATABASE_URL connects as '{name}', a BYPASSRLS role: row-level security (tenant isolation) "
                f"would not apply; {fix}"]
    if role["owner"]:
        return [f"DATABASE_URL connects as '{name}', the owner of the tables, which can switch row-level "
                f"security off; {fix}, and give the owner's URL as DATABASE_MIGRATION_URL"]
    return []


async def _check_schema(connection: asyncpg.Connection, needs: Needs) -> None:
    role: str = await connection.fetchval("SELECT current_user")
    if await connection.fetchval("SELECT to_regclass('schema_migrations')") is None:
        raise ConfigError(f"the database has no schema yet: {MIGRATE_FIX}")
    privileged = await connection.fetchval(
        "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
        " OR EXISTS (SELECT FROM pg_class c WHERE c.relname = 'schema_migrations' "
        "            AND pg_has_role(current_user, c.relowner, 'MEMBER'))")
    if not privileged:
        exists = await connection.fetchval("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", APP_ROLE)
        if not exists:
            raise ConfigError(f"the role {APP_ROLE} does not exist, so the database was never migrated: {MIGRATE_FIX}")
        if not await connection.fetchval("SELECT pg_has_role(current_user, $1, 'USAGE')", APP_ROLE):
            raise ConfigError(f"role '{role}' is not a member of {APP_ROLE}, so every request would fail with "
                              f"'permission denied': {ROLE_FIX.format(role=role)}")
    expected = [m.version for m in bundled()]
    if not await connection.fetchval("SELECT has_table_privilege('schema_migrations', 'SELECT')"):
        raise ConfigError(f"the database predates migration 0007 (this image expects {expected[-1]}): {MIGRATE_FIX}")
    applied = {r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")}
    if missing := [version for version in expected if version not in applied]:
        raise ConfigError(f"the database lacks migration {', '.join(missing)} (this image expects {expected[-1]}): "
                          f"{MIGRATE_FIX}")
    for table, privileges in needs.tables.items():
        if await connection.fetchval("SELECT to_regclass($1)", table) is None:
            raise ConfigError(f"table {table} is missing although the migrations are recorded: restore it or "
                              "the database")
        lacking = [p for p in privileges
                   if not await connection.fetchval("SELECT has_table_privilege($1, $2)", table, p)]
        if lacking:
            raise ConfigError(f"role '{role}' cannot {', '.join(lacking)} {table}: {ROLE_FIX.format(role=role)}")
    for function in needs.functions:
        if not await connection.fetchval("SELECT has_function_privilege($1, 'EXECUTE')", function):
            raise ConfigError(f"role '{role}' cannot run {function}: {ROLE_FIX.format(role=role)}")
