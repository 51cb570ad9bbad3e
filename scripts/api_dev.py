"""`scripts/run api`: learner-api and its evaluator on this machine, with demo content, in under a minute.

Uses the PostgreSQL and Redis on 127.0.0.1 (scripts/lib.sh starts throwaway ones when none answer):
makes the database `learner_dev` (superuser, as a DBA would), migrates it, makes the login role
`learner_dev_app` (a member of learner_app: what the API really runs as, under row-level security),
loads the demo content, prints a development token and curl commands, then serves the API on :8000 and
runs the evaluator (metrics on :9102) until Ctrl-C. Development mode only: secrets are made up per run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys

import asyncpg

from learner_api.auth import mint
from learner_api.migrate import migrate
from learner_api.seed import seed
from learner_api.settings import Settings

ADMIN_URL = os.environ.get("LEARNER_DEV_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LEARNER_DEV_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE = "learner_dev"
APP_ROLE = "learner_dev_app"


async def prepare(database: str = DATABASE) -> str:
    """Database, migrations, app role and demo content; returns the app role's DATABASE_URL."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    admin_db = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    applied = await migrate(admin_db)
    print(f"database {database}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    connection = await asyncpg.connect(admin_db)
    try:
        await connection.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN "
            f"CREATE ROLE {APP_ROLE} LOGIN; END IF; END $$; GRANT learner_app TO {APP_ROLE}")
    finally:
        await connection.close()
    app_url = admin_db.replace("://postgres@", f"://{APP_ROLE}@", 1)
    version = await seed(app_url, REDIS_URL, "default")
    print(f"demo content loaded into tenant 'default' (content version {version})")
    return app_url


def main() -> int:
    database_url = asyncio.run(prepare())
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "TENANT_MODE": "enabled", "JWT_SECRET": secrets.token_urlsafe(32),
           "PAYMENT_WEBHOOK_SECRET": secrets.token_urlsafe(32), "PORT": os.environ.get("PORT", "8000"),
           "METRICS_PORT": os.environ.get("METRICS_PORT", "9102")}
    settings = Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"],  # type: ignore[arg-type]
                        node_env="development", jwt_secret=env["JWT_SECRET"])  # type: ignore[arg-type]
    token = mint(settings, "ada", "default", ttl=8 * 3600)
    base = f"http://127.0.0.1:{env['PORT']}"
    api_metrics = int(env["METRICS_PORT"]) + 1  # both read METRICS_PORT; on one machine they need two
    print(f"""
learner-api on {base} (OpenAPI: {base}/docs, metrics on :{api_metrics}/metrics), evaluator metrics on \
:{env['METRICS_PORT']}/metrics

  TOKEN={token}
  curl -s {base}/v1/courses -H "Authorization: Bearer $TOKEN"
  curl -s {base}/v1/lessons/python-101-hello -H "Authorization: Bearer $TOKEN"
  curl -s {base}/v1/lessons/python-101-files -H "Authorization: Bearer $TOKEN"     # paid: 403
  curl -s -X POST {base}/v1/progress -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"events":[{{"id":"'$(python3 -c 'import uuid;print(uuid.uuid4())')'","verb":"lesson_viewed",\\
"lesson_id":"python-101-hello","occurred_at":"'$(date -u +%FT%TZ)'"}}]}}'
  curl -s -X POST {base}/v1/checkout -H "Authorization: Bearer $TOKEN" -H "Idempotency-Key: $(date +%s)" \\
       -H 'Content-Type: application/json' -d '{{"product_id":"python-101-full"}}'

Ctrl-C stops both.
""", flush=True)
    evaluator = subprocess.Popen([sys.executable, "-m", "learner_api.cli", "evaluator"], env=env)
    try:
        api = subprocess.Popen([sys.executable, "-m", "learner_api.cli", "serve", "--host", "127.0.0.1",
                                "--drain-seconds", "0"], env={**env, "METRICS_PORT": str(api_metrics)})
        return api.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (evaluator, *([api] if "api" in locals() else [])):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)


if __name__ == "__main__":
    sys.exit(main())
