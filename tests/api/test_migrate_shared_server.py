"""Two databases of one PostgreSQL server migrating at the same moment: two platforms sharing a managed
server, or two tenants' databases. The roles the migrations create (learner_app, learner_stats) and the
memberships they grant are server-wide, while the runner's advisory lock is per database.

On a server of its own (a throwaway one, started here): the shared test server has those roles already,
which hides the race, and dropping them there would break every other worker's database."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from bench.soak.processes import Postgres, postgres_bin
from learner_api.migrate import bundled, migrate

_POSTGRES = postgres_bin() is not None
pytestmark = pytest.mark.skipif(not _POSTGRES, reason="starts its own PostgreSQL: apt-get install postgresql")
ROUNDS = 20
MIGRATIONS = bundled()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A throwaway PostgreSQL server of this module's; its superuser URL without a database name."""
    folder = Path(tempfile.mkdtemp(prefix="learner-migrate-"))
    folder.chmod(0o755)  # PostgreSQL runs as its own user under it
    postgres = Postgres(folder / "postgres")
    try:
        postgres.init()
        postgres.start()
        yield f"postgresql://postgres@127.0.0.1:{postgres.port}"
    finally:
        postgres.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


async def test_two_fresh_databases_of_one_server_migrate_at_once(server: str) -> None:
    admin = await asyncpg.connect(f"{server}/postgres")
    failures: list[str] = []
    try:
        for round_ in range(ROUNDS):
            for name in ("one", "two"):
                await admin.execute(f"CREATE DATABASE {name}")
            # Every other round goes in two steps, so that both runs reach the later files at the same moment.
            for files in ([MIGRATIONS] if round_ % 2 else [MIGRATIONS[:3], MIGRATIONS]):
                results = await asyncio.gather(migrate(f"{server}/one", files), migrate(f"{server}/two", files),
                                               return_exceptions=True)
                failures += [f"round {round_}: {result}" for result in results if isinstance(result, BaseException)]
            # A fresh server again: no database, no role of the platform.
            for statement in ("DROP DATABASE one WITH (FORCE)", "DROP DATABASE two WITH (FORCE)",
                              "DROP ROLE learner_app", "DROP ROLE learner_stats"):
                await admin.execute(statement)
    finally:
        await admin.close()
    assert failures == [], f"{len(failures)} migration runs failed in {ROUNDS} rounds:\n" + "\n".join(failures[:5])
