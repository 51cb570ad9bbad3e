"""Migrations are backward compatible for one release (expand, then contract later), checked against history.

The operator migrates the database before it rolls the pods, so for a while (and for good after a
rollback) the previous release's code runs against the new schema. Every commit is a release here (the
image tag is the git SHA), so for each commit that added migrations, the code of its parent is the
previous release: every SQL statement that code sends (its string constants that start like one) must
still be accepted by PostgreSQL's parser and planner (PREPARE: tables, columns, types, functions and
constraint names resolved) after the commit's migrations, wherever it was before them. Files added in
the working tree count as a commit on top of HEAD, so a breaking migration fails before it is committed.

What PREPARE cannot see, a rule on the migration text covers: a column added as NOT NULL needs a
DEFAULT, or every INSERT of the previous release fails. docs/install.md ("Upgrading") has the rule.
"""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import asyncpg
import pytest

from learner_api import cli
from learner_api.migrate import Migration, bundled, migrate, upgrade
from learner_operator.migration import schema_version_of
from tests.api.conftest import throwaway_database

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = "learner_api/migrations"
_STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\s")
_SQL_FILE = re.compile(r"^[0-9]{4}[a-z]?_[a-z0-9_]+\.sql$")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def history() -> None:
    """The previous releases come from git: a shallow or missing history would make this test vacuous."""
    try:
        shallow = git("rev-parse", "--is-shallow-repository").strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs the git history of the repository (the previous releases' code is read from it): "
                    "run the tests from a git clone")
    if shallow != "false":  # scripts/test unshallows a clone when it can; said in the summary when it could not
        pytest.skip("needs the full git history: clone without --depth, or `git fetch --unshallow`")


def statements(sources: Iterable[str]) -> set[str]:
    """The SQL a code base sends: its string constants that start as a statement does."""
    found: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _STATEMENT.match(node.value):
                found.add(node.value)
    return found


def code_at(commit: str) -> set[str]:
    files = [f for f in git("ls-tree", "-r", "--name-only", commit, "learner_api").split() if f.endswith(".py")]
    return statements(git("show", f"{commit}:{f}") for f in files)


def code_now() -> set[str]:
    return statements(path.read_text() for path in (ROOT / "learner_api").rglob("*.py"))


def migrations_at(commit: str | None) -> list[Migration]:
    """The migrations a commit has (the working tree's when None), each with today's text: the one databases
    get now (an applied file is never changed; where history has an early edit, today's text is the fix)."""
    if commit is None:
        names = [p.name for p in (ROOT / MIGRATIONS).iterdir()]
    else:
        names = [Path(f).name for f in git("ls-tree", "--name-only", commit, f"{MIGRATIONS}/").split()]
    names = sorted(n for n in names if _SQL_FILE.match(n))
    current = {m.version: m for m in bundled()}
    out = []
    for name in names:
        version = name.removesuffix(".sql")
        out.append(current.get(version) or Migration(version, git("show", f"{commit}:{MIGRATIONS}/{name}")))
    return out


def releases() -> list[object]:
    """(what it is, the previous release's commit, the commit that migrated past it; None: the working tree)."""
    out: list[object] = []
    try:
        for commit in git("log", "--diff-filter=A", "--format=%H", "--", MIGRATIONS).split():
            parents = git("rev-list", "--parents", "-n", "1", commit).split()[1:]
            if parents:
                what = f"{commit[:7]} over {parents[0][:7]}"
                out.append(pytest.param(what, parents[0], commit, id=what))
        head = {m.version for m in migrations_at("HEAD")}
    except (OSError, subprocess.CalledProcessError):  # reported by the `history` fixture
        return [pytest.param("", "", None, id="no-history")]
    if {m.version for m in migrations_at(None)} - head:
        out.append(pytest.param("the working tree over HEAD", "HEAD", None, id="working-tree"))
    return out


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with throwaway_database("learner_compat") as url:
        yield url


async def refused(dsn: str, sql: Iterable[str]) -> dict[str, str]:
    """The statements PostgreSQL will not prepare against this database, with why."""
    connection = await asyncpg.connect(dsn, statement_cache_size=0)
    out: dict[str, str] = {}
    try:
        for statement in sql:
            try:
                await connection.prepare(statement)
            except asyncpg.PostgresError as exc:
                out[statement] = str(exc)
    finally:
        await connection.close()
    return out


async def broken_by(dsn: str, previous: list[Migration], new: list[Migration], code: set[str]) -> dict[str, str]:
    """What of ``code`` (that worked on ``previous``) the migrations ``new`` adds break."""
    await migrate(dsn, previous)
    worked = code - set(await refused(dsn, code))
    await migrate(dsn, new)
    return await refused(dsn, worked)


@pytest.mark.usefixtures("history")
@pytest.mark.parametrize(("what", "previous", "commit"), releases())
async def test_the_previous_release_works_on_the_new_schema(
    database: str, what: str, previous: str, commit: str | None,
) -> None:
    code = code_at(previous)
    broken = await broken_by(database, migrations_at(previous), migrations_at(commit), code)
    added = sorted({m.version for m in migrations_at(commit)} - {m.version for m in migrations_at(previous)})
    assert broken == {}, (f"{', '.join(added)} ({what}) breaks what the previous release sends; expand now and "
                          f"contract in a later release (docs/install.md, Upgrading): {broken}")


async def test_a_contracting_migration_is_caught(database: str) -> None:
    """The check above can fail: renaming a column the code reads is what it exists for."""
    code = code_now()
    assert len(code) >= 40  # the extraction finds the data layer's statements
    rename = Migration("9999_rename_title", "ALTER TABLE lessons RENAME COLUMN title TO heading;")
    broken = await broken_by(database, bundled(), [*bundled(), rename], code)
    assert broken
    assert all("title" in why for why in broken.values())


def not_null_without_default(sql: str) -> list[str]:
    """`ALTER TABLE ... ADD [COLUMN] ... NOT NULL` without a DEFAULT: every INSERT of the previous release fails."""
    found = []
    for statement in re.sub(r"--[^\n]*", "", sql).split(";"):
        text = " ".join(statement.split())
        if not re.match(r"ALTER TABLE\b", text, re.IGNORECASE):
            continue
        for clause in re.split(r",\s*(?=ADD\b)", text, flags=re.IGNORECASE):
            added = re.search(r"\bADD\b(?!\s+CONSTRAINT\b)(.*)", clause, re.IGNORECASE)
            if added and re.search(r"\bNOT NULL\b", added.group(1), re.IGNORECASE) and \
                    not re.search(r"\bDEFAULT\b", added.group(1), re.IGNORECASE):
                found.append(clause)
    return found


def test_added_columns_that_must_be_set_have_a_default() -> None:
    assert not_null_without_default("ALTER TABLE lessons ADD COLUMN level int NOT NULL;")
    assert not_null_without_default("ALTER TABLE a ADD COLUMN b int, ADD COLUMN c text NOT NULL;")
    assert not not_null_without_default("ALTER TABLE tenants ADD COLUMN v bigint NOT NULL DEFAULT 1;")
    assert not not_null_without_default("CREATE TABLE t (id text NOT NULL);")
    assert not not_null_without_default("ALTER TABLE t ADD CONSTRAINT c CHECK (x IS NOT NULL) NOT VALID;")
    for migration in bundled():
        assert not_null_without_default(migration.sql) == [], migration.version


async def test_migrate_leaves_the_schema_version_for_the_operator(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The migration Job's pod says "schema version X" in its termination message; the operator reads X."""
    message = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(message))
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("NODE_ENV", "development")
    newest = bundled()[-1].version
    for _ in range(2):  # applying everything, then finding it all there
        assert await asyncio.to_thread(cli.main, ["migrate"]) == 0
        assert schema_version_of(message.read_text()) == newest
    assert "the database was up to date" in capsys.readouterr().out
    # After a rollback, the database is ahead of the image: the version says what the database holds.
    ahead = Migration("9999_from_the_next_release", "CREATE TABLE next_release (id int);")
    assert (await upgrade(database, [*bundled(), ahead])).schema_version == "9999_from_the_next_release"
    assert await asyncio.to_thread(cli.main, ["migrate"]) == 0
    assert schema_version_of(message.read_text()) == "9999_from_the_next_release"
